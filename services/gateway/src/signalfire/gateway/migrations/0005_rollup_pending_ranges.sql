-- A pending rollup row also says what its batch covers: the host and the earliest and latest
-- sample time (epoch seconds). A row whose message is never delivered again (max_deliver
-- used up, or the stream discarded it) would otherwise keep its samples out of the rollups
-- for good; with these columns the gateway's maintenance recomputes the rollups of that host
-- and time range from the raw samples (signalfire.gateway.maintenance.repair_rollups).
-- Rows written before this migration have NULLs: they can only be dropped.
ALTER TABLE rollup_pending
    ADD COLUMN IF NOT EXISTS host text,
    ADD COLUMN IF NOT EXISTS t_min double precision,
    ADD COLUMN IF NOT EXISTS t_max double precision;

-- The histogram key of a value, exactly as the gateway computes it in Python
-- (signalfire.gateway.rollup.hist_key): "z" for |v| < 1e-9, else "p<i>"/"n<i>" with
-- i = ceil(ln|v| / ln 1.02). Float8 throughout (a numeric 1.02 would give other keys at the
-- bucket bounds); ln and Python's math.log both call the C library's log.
CREATE OR REPLACE FUNCTION sf_hist_key(v double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN abs(v) < '1e-9'::float8 THEN 'z'
        ELSE (CASE WHEN v > 0 THEN 'p' ELSE 'n' END)
             || ceil(ln(abs(v)) / ln('1.02'::float8))::bigint::text
    END
$$;
