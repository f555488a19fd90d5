-- A rollup row of at most 32 samples (signalfire.gateway.rollup.EXACT_MAX) keeps the values
-- themselves as its histogram, {"v": [...]}: percentiles read from it are exact, as
-- percentile_disc of the raw samples. Merging two histograms joins their values while both
-- kept them (an empty histogram has none to keep) and together they are at most 32; otherwise
-- both become bucket counts (sf_hist_key of each value) and the counts add up. Rows written
-- before this migration hold counts: they merge and read as before.

-- The bucket counts of a histogram, made from its values if it kept them.
CREATE OR REPLACE FUNCTION sf_hist_counts(h jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN h ? 'v' THEN coalesce(
            (SELECT jsonb_object_agg(k, n)
             FROM (SELECT sf_hist_key(x::float8) AS k, count(*) AS n
                   FROM jsonb_array_elements_text(h -> 'v') AS e(x) GROUP BY 1) AS t),
            '{}'::jsonb)
        ELSE h
    END
$$;

CREATE OR REPLACE FUNCTION sf_hist_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        -- the common case, a few samples a minute: join the values
        WHEN (a ? 'v' OR a = '{}'::jsonb) AND (b ? 'v' OR b = '{}'::jsonb)
             AND jsonb_array_length(coalesce(a -> 'v', '[]'::jsonb))
                 + jsonb_array_length(coalesce(b -> 'v', '[]'::jsonb)) <= 32
        THEN CASE WHEN b = '{}'::jsonb THEN a
                  WHEN a = '{}'::jsonb THEN b
                  ELSE jsonb_build_object('v', (a -> 'v') || (b -> 'v')) END
        ELSE (SELECT ca || coalesce(
                  (SELECT jsonb_object_agg(k, coalesce((ca ->> k)::bigint, 0) + n::bigint)
                   FROM jsonb_each_text(sf_hist_counts(b)) AS t(k, n)),
                  '{}'::jsonb)
              FROM (SELECT sf_hist_counts(a) AS ca) AS s)
    END
$$;
