-- Signalfire's first schema: metric series and samples, events, hosts, alerts with their
-- history, API tokens, and the (for now minimal) notification log and audit log.
-- Times are timestamptz; labels and free-form payloads are jsonb.

-- One row per distinct (host, metric, labels): samples refer to it by id.
CREATE TABLE series (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host text NOT NULL,
    name text NOT NULL,
    labels jsonb NOT NULL DEFAULT '{}',
    unit text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (host, name, labels)
);
CREATE INDEX series_name_idx ON series (name);

-- The unique index makes writing a redelivered batch a no-op (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE samples (
    time timestamptz NOT NULL,
    series_id bigint NOT NULL,
    value double precision NOT NULL
);
CREATE UNIQUE INDEX samples_series_time_idx ON samples (series_id, time DESC);

-- Discrete events (EventBatch). The unique index makes redelivery a no-op here too.
CREATE TABLE events (
    time timestamptz NOT NULL,
    host text NOT NULL,
    type text NOT NULL,
    message text NOT NULL DEFAULT '',
    labels jsonb NOT NULL DEFAULT '{}',
    value double precision
);
CREATE UNIQUE INDEX events_identity_idx ON events (host, type, time, md5(message || labels::text));
CREATE INDEX events_time_idx ON events (time DESC);

-- TimescaleDB when the server has it (Apache or Timescale-licensed edition); plain tables,
-- with a BRIN index for time scans, when it does not or when we may not create it.
-- An installed but not preloaded TimescaleDB ends the session (FATAL) on CREATE EXTENSION,
-- so shared_preload_libraries is checked first.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
           AND 'timescaledb' = ANY (string_to_array(
                   replace(current_setting('shared_preload_libraries'), ' ', ''), ','))) THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            PERFORM create_hypertable('samples', 'time', chunk_time_interval => interval '1 day');
            PERFORM create_hypertable('events', 'time', chunk_time_interval => interval '7 days');
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'TimescaleDB is available but could not be used (%); using plain tables', SQLERRM;
        END;
    END IF;
    CREATE INDEX samples_time_brin ON samples USING brin (time);
END
$$;

-- ``status`` is what the agent last said (online/offline, at ``status_at``); whether a host is
-- up or down is computed from ``last_seen`` and ``interval`` when asked.
CREATE TABLE hosts (
    host text PRIMARY KEY,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'online' CHECK (status IN ('online', 'offline')),
    status_at timestamptz,
    interval double precision,
    facts jsonb NOT NULL DEFAULT '{}',
    labels jsonb NOT NULL DEFAULT '{}'
);

-- One row per alert instance (AlertEvent.id), holding its newest state.
CREATE TABLE alerts (
    id text PRIMARY KEY,
    fingerprint text NOT NULL,
    rule text NOT NULL,
    status text NOT NULL CHECK (status IN ('firing', 'resolved')),
    severity text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    host text NOT NULL,
    labels jsonb NOT NULL DEFAULT '{}',
    annotations jsonb NOT NULL DEFAULT '{}',
    value double precision,
    threshold double precision,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz,
    last_event_at timestamptz NOT NULL,
    seq bigint NOT NULL DEFAULT 0
);
CREATE INDEX alerts_starts_at_idx ON alerts (starts_at DESC);
CREATE INDEX alerts_host_status_idx ON alerts (host, status);
CREATE INDEX alerts_fingerprint_idx ON alerts (fingerprint);

-- Everything that happened to an alert: its events now, people's actions later.
CREATE TABLE alert_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id text NOT NULL,
    time timestamptz NOT NULL,
    event text NOT NULL,
    seq bigint NOT NULL DEFAULT 0,
    payload jsonb NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX alert_history_event_idx ON alert_history (alert_id, event, seq, time);

-- API tokens are stored only as the SHA-256 of the token.
CREATE TABLE api_tokens (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Delivery results (DeliveryResult) from the notifier.
CREATE TABLE notifications (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time timestamptz NOT NULL,
    alert_id text NOT NULL,
    channel text NOT NULL,
    status text NOT NULL,
    attempt integer NOT NULL DEFAULT 1,
    payload jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX notifications_alert_idx ON notifications (alert_id, time DESC);

-- Every state-changing API call.
CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL DEFAULT '',
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_time_idx ON audit (time DESC);
