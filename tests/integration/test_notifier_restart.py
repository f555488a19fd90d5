"""A notifier killed with SIGKILL in the middle of an escalation: the notifier started after
it sends the pending escalation step, once, and nothing twice. Real processes, real NATS,
a real HTTP receiver; real (short) time, since another process's clock cannot be injected."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signalfire.bus import NatsConfig
from signalfire.events import encode
from tests.support.alerts import firing_alert
from tests.support.notifiers import kill9, notifier_process
from tests.support.polling import wait_until
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


async def test_kill_9_mid_escalation_still_escalates_once(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    config = tmp_path / "notify.yaml"
    config.write_text(
        f"""\
nats: {{url: "{nats_config.url}", prefix: {nats_config.prefix}, metrics_max_bytes: 16777216}}
tick: 100ms
channels:
  ops: {{type: webhook, url: "{receiver.url("ops")}"}}
  oncall: {{type: webhook, url: "{receiver.url("oncall")}"}}
routes:
  - channels: [ops]
    escalate: [{{after: 3s, channels: [oncall]}}]
"""
    )
    first = notifier_process("notifier-1", config, tmp_path).start()
    second = notifier_process("notifier-2", config, tmp_path)
    try:
        alert = firing_alert(rule="HostDown", severity="critical")
        alert_id = alert.id
        await nc.jetstream().publish(nats_config.subjects.alerts("web-1"), encode(alert))
        await wait_until(lambda: len(receiver.posted("ops")) == 1, "the firing message", 20)
        kill9(first)  # mid-escalation: the step is due in ~3 s
        assert receiver.transitions("oncall") == []

        second.start()
        # About 6 s on a quiet machine (a process start, its imports, its first tick); a loaded
        # 2-core machine measuring coverage in every subprocess took over 20 s.
        await wait_until(lambda: len(receiver.posted("oncall")) == 1, "the escalation after the restart", 60)
        await asyncio.sleep(1.0)
        # The kill may land after the receiver answered and before the ledger's `sent` mark
        # (a loaded machine): the next notifier then sends it again with the same idempotency
        # key (docs/notifications.md, "Idempotency keys"): one message to a receiver that
        # de-duplicates, which is what is checked for the firing notice.
        ops = receiver.posted("ops")
        assert {(p.alert_id, p.transition) for p in ops} == {(alert_id, "firing")}
        assert len({p.idempotency_key for p in ops}) == 1, [p.idempotency_key for p in ops]
        assert receiver.transitions("oncall") == [(alert_id, "escalation")]  # the step, once
    finally:
        first.stop()
        second.stop()
