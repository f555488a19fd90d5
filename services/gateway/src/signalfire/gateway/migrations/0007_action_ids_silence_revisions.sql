-- One writer per fact: the gateway's consumers write these rows from the bus and the KV bucket.

-- An action's unique id (AlertAction.id, also its Nats-Msg-Id): a redelivered action is stored
-- once, and the API finds the row it waits for. Actions published before ids existed have
-- none and are still told apart by (alert_id, event, seq, time).
ALTER TABLE alert_history ADD COLUMN action_id text;
CREATE UNIQUE INDEX alert_history_action_id_idx ON alert_history (action_id) WHERE action_id IS NOT NULL;

-- The silences table mirrors the sf_silences KV bucket, the silences' source of truth; the
-- revision of the entry a row shows keeps an older entry (a slower gateway's mirror) from
-- overwriting a newer one. 0: written before the mirror existed.
ALTER TABLE silences ADD COLUMN revision bigint NOT NULL DEFAULT 0;
