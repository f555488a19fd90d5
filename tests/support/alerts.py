"""Alert events as the evaluator publishes them, for tests that play the evaluator."""

from __future__ import annotations

import time
import uuid
from typing import Any

from signalfire.bus import NatsConfig
from signalfire.events import AlertEvent, encode


def firing_alert(alert_id: str | None = None, *, now: float | None = None, **fields: Any) -> AlertEvent:
    """A firing ``HighCPU`` alert (severity ``high``) on ``web-1`` that started ``now`` (the
    current time by default), fingerprint ``fp-<id>``, a fresh id unless given; ``fields``
    replace or add any other field."""
    alert_id = alert_id or f"alert-{uuid.uuid4().hex[:8]}"
    at = time.time() if now is None else now
    values: dict[str, Any] = {
        "id": alert_id,
        "fingerprint": f"fp-{alert_id}",
        "rule": "HighCPU",
        "status": "firing",
        "severity": "high",
        "host": "web-1",
        "starts_at": at,
        "time": at,
        **fields,
    }
    return AlertEvent(**values)


async def publish_alert(nc: Any, nats: NatsConfig, alert: AlertEvent, msg_id: str | None = None) -> Any:
    """Publish ``alert`` on its host's alert subject, de-duplicated by JetStream on ``msg_id``
    (``<id>:<status>`` by default, as the evaluator does); JetStream's acknowledgement."""
    return await nc.jetstream().publish(
        nats.subjects.alerts(alert.host),
        encode(alert),
        headers={"Nats-Msg-Id": msg_id or f"{alert.id}:{alert.status}"},
    )
