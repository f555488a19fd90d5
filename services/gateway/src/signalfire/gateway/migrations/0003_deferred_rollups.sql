-- Ingest copies samples straight into ``samples`` and merges their rollups a few seconds later,
-- many rounds at once. ``rollup_pending`` holds the JetStream stream sequence of every metrics
-- message whose samples are stored but not yet rolled up; the row is written in the samples'
-- transaction and deleted in the rollup merge's transaction, so a message is rolled up exactly
-- once even when the gateway dies in between (the message was not acknowledged yet and comes
-- back).
CREATE TABLE IF NOT EXISTS rollup_pending (
    seq bigint PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Adds two histograms. Only the keys of ``b`` (the smaller side: one merge's new values) are
-- visited; ``a || …`` replaces their counts in one pass instead of re-aggregating both sides.
CREATE OR REPLACE FUNCTION sf_hist_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT a || coalesce(
        (SELECT jsonb_object_agg(k, coalesce((a ->> k)::bigint, 0) + v::bigint)
         FROM jsonb_each_text(b) AS t(k, v)),
        '{}'::jsonb)
$$;
