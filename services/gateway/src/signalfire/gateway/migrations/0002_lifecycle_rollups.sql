-- Alert lifecycle (acknowledged, resolved by hand, notes), silences, richer delivery and audit
-- records, token bookkeeping, and the 1-minute and 1-hour rollups of samples.

ALTER TABLE alerts
    ADD COLUMN acknowledged_by text,
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN resolved_by text,
    ADD COLUMN resolved_at timestamptz,
    ADD COLUMN notes jsonb NOT NULL DEFAULT '[]';
CREATE INDEX alerts_rule_idx ON alerts (rule, starts_at DESC);

-- Delivery results: the whole DeliveryResult; a redelivered result is stored once.
ALTER TABLE notifications
    ADD COLUMN transition text NOT NULL DEFAULT 'firing',
    ADD COLUMN rule text NOT NULL DEFAULT '',
    ADD COLUMN host text NOT NULL DEFAULT '',
    ADD COLUMN error text,
    ADD COLUMN reason text;
CREATE UNIQUE INDEX notifications_identity_idx ON notifications (alert_id, channel, attempt, status, time);
CREATE INDEX notifications_time_idx ON notifications (time DESC, id DESC);

-- Silences as created through the API (the notifier reads them from the sf_silences KV bucket;
-- this table is the record of who silenced what).
CREATE TABLE silences (
    id text PRIMARY KEY,
    matchers jsonb NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    author text NOT NULL,
    comment text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    expired_at timestamptz
);

-- Who did what, when and from where.
ALTER TABLE audit
    ADD COLUMN source text NOT NULL DEFAULT '',
    ADD COLUMN status integer;

ALTER TABLE api_tokens
    ADD COLUMN created_by text NOT NULL DEFAULT '',
    ADD COLUMN last_used_at timestamptz;

-- Rollups: per series and bucket the count, sum, min, max and newest value, and a histogram
-- for percentiles: {"<key>": count} where the key of a value v is "z" for |v| < 1e-9, else
-- "p<i>" (v > 0) or "n<i>" (v < 0) with i = ceil(log(|v|) / log(1.02)) — buckets whose bounds
-- are 2 % apart, so a percentile read from them is within 1 % of a value in the bucket.
CREATE TABLE samples_1m (
    series_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    count bigint NOT NULL,
    sum double precision NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    last double precision NOT NULL,
    last_time timestamptz NOT NULL,
    hist jsonb NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX samples_1m_series_bucket_idx ON samples_1m (series_id, bucket DESC);

CREATE TABLE samples_1h (LIKE samples_1m INCLUDING DEFAULTS);
CREATE UNIQUE INDEX samples_1h_series_bucket_idx ON samples_1h (series_id, bucket DESC);

-- Adds two histograms (the merge of an upsert).
CREATE FUNCTION sf_hist_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(k, n), '{}'::jsonb)
    FROM (SELECT k, sum(v::bigint) AS n
          FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) AS t(k, v)
          GROUP BY k) AS s
$$;

-- The rollups are hypertables too when samples is one (drop_chunks then serves retention);
-- otherwise plain tables with BRIN indexes for the retention deletes.
DO $$
DECLARE
    hyper boolean := false;
BEGIN
    BEGIN
        hyper := EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'samples');
    EXCEPTION WHEN undefined_table THEN
        hyper := false;  -- no TimescaleDB
    END;
    IF hyper THEN
        PERFORM create_hypertable('samples_1m', 'bucket', chunk_time_interval => interval '7 days');
        PERFORM create_hypertable('samples_1h', 'bucket', chunk_time_interval => interval '90 days');
    ELSE
        CREATE INDEX samples_1m_bucket_brin ON samples_1m USING brin (bucket);
        CREATE INDEX samples_1h_bucket_brin ON samples_1h USING brin (bucket);
        CREATE INDEX events_time_brin ON events USING brin (time);
    END IF;
END
$$;
