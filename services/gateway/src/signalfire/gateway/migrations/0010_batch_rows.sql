-- A row per metric batch instead of a row per sample (docs/scaling.md, "A row per batch").
--
-- An agent sends the same series in the same order every time (the batch's layout): a batch
-- whose samples share its time is stored as one row of ``sample_batches`` — its time, its
-- layout and its values in the layout's order — where it made one row per sample before, each
-- with its own insert into the (series_id, time) index. PostgreSQL's CPU per sample went from
-- 4-10.5 µs to 0.12-0.47 (bench/copy_growth.py --packed), and a sample takes ~9 bytes on disk
-- instead of ~98. Batches whose samples carry times of their own stay a row per sample, in
-- ``sample_rows`` (the old ``samples`` table, renamed: its data stays where it is).
--
-- ``samples`` is now a view over both, with the columns it had: every reader (the API's
-- queries, export, rollup repair, people's own SQL) reads it as before, and PostgreSQL pushes a
-- reader's series and time conditions through it into ``layout_series`` and the batches'
-- (layout_id, time) index. The view cannot be written to: the gateway writes the tables.
ALTER TABLE samples RENAME TO sample_rows;

-- The ordered series of a batch layout, known by a digest of its ids (the list may be longer
-- than a B-tree key may be).
CREATE TABLE layouts (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest bytea NOT NULL UNIQUE,
    series_ids bigint[] NOT NULL
);

-- Where a series' values are in the rows of each layout that holds it (1-based positions).
CREATE TABLE layout_series (
    series_id bigint NOT NULL,
    layout_id integer NOT NULL,
    position integer NOT NULL,
    PRIMARY KEY (series_id, layout_id)
);

-- The unique index makes writing a redelivered batch a no-op, as ``sample_rows``' does.
CREATE TABLE sample_batches (
    time timestamptz NOT NULL,
    layout_id integer NOT NULL,
    vals double precision[] NOT NULL
);
CREATE UNIQUE INDEX sample_batches_layout_time_idx ON sample_batches (layout_id, time DESC);

-- A hypertable where the samples were one (a day a chunk, as they were), else a BRIN index for
-- the retention deletes.
DO $$
DECLARE
    hyper boolean := false;
BEGIN
    IF to_regclass('timescaledb_information.hypertables') IS NOT NULL THEN
        -- (dynamic: without the extension the view does not exist to be planned against)
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables'
                ' WHERE hypertable_name = ''sample_rows'')' INTO hyper;
    END IF;
    IF hyper THEN
        PERFORM create_hypertable('sample_batches', 'time', chunk_time_interval => interval '1 day');
    ELSE
        CREATE INDEX sample_batches_time_brin ON sample_batches USING brin (time);
    END IF;
END
$$;

CREATE VIEW samples AS
    SELECT time, series_id, value FROM sample_rows
    UNION ALL
    SELECT b.time, ls.series_id, b.vals[ls.position]
    FROM sample_batches b JOIN layout_series ls ON ls.layout_id = b.layout_id;
