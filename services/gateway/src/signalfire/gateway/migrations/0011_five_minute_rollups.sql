-- The 5-minute rollups: made once per series and 5 minutes from the 1-minute rows when the 5
-- minutes have ended, as the 1-hour rows are (signalfire.gateway.rollup.fold), with the totals
-- only (count, sum, min, max, newest value; `hist` stays empty: percentiles read the minutes).
-- A query whose step is a multiple of 5 minutes reads a fifth of the rows it read from the
-- 1-minute rollups: the fleet CPU over 24 h at 5-minute steps, 57,600 rows instead of 288,000
-- (docs/benchmarks.md).
--
-- rollup_fold.horizon_5m: every 5 minutes from since_5m up to it have their 5-minute rows made
-- from all their minutes; samples of those minutes that arrive later are merged into the
-- 5-minute rows at once. A database that never rolled anything up starts both at -infinity
-- (its first fold starts at its first 1-minute row). A database with rollups starts them at
-- the current 5 minutes: its older minutes are not folded again (a day of a 2,000-host fleet
-- is tens of CPU-minutes), and queries of ranges starting before since_5m keep reading the
-- 1-minute rows (signalfire.gateway.api.query.data_source).
CREATE TABLE samples_5m (LIKE samples_1m INCLUDING DEFAULTS);
-- covering, as the other rollups' indexes are (migration 0004)
CREATE UNIQUE INDEX samples_5m_series_bucket_covering
    ON samples_5m (series_id, bucket DESC) INCLUDE (count, sum, min, max, last, last_time);

ALTER TABLE rollup_fold
    ADD COLUMN horizon_5m timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN since_5m timestamptz NOT NULL DEFAULT '-infinity';
UPDATE rollup_fold SET horizon_5m = start, since_5m = start
FROM (SELECT date_bin('5 minutes', now(), 'epoch') AS start) AS s
WHERE EXISTS (SELECT 1 FROM samples_1m);

-- a hypertable when the other rollups are (as migration 0002 decides)
DO $$
DECLARE
    hyper boolean := false;
BEGIN
    BEGIN
        hyper := EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'samples_1m');
    EXCEPTION WHEN undefined_table THEN
        hyper := false;  -- no TimescaleDB
    END;
    IF hyper THEN
        PERFORM create_hypertable('samples_5m', 'bucket', chunk_time_interval => interval '30 days');
    ELSE
        CREATE INDEX samples_5m_bucket_brin ON samples_5m USING brin (bucket);
    END IF;
END
$$;
