"""kill -9 of the NATS node serving the notifier's watch of the silences, in a three-node
cluster; a silence is created at once and an alert of the silenced host fires: it is muted,
and an alert of another host is sent.

What it guards against, seen walking ``make up NATS_NODES=3``: a silence created right after
such a kill let the silenced host's page through, the notifier's watch of the bucket being
seconds behind (docs/faults.md scenario 12, docs/notifications.md "Silences").
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from devstack import ServiceProcess, free_port

from signalfire.bus import connect, ensure_streams
from signalfire.events import Silence
from signalfire.matchers import Matcher
from signalfire.notifier.intake import DURABLE
from signalfire.notifier.mirror import FRESH_FOR
from tests.faults.support import (
    eventually,
    kill9,
    log_tail,
    move_leaders_off,
    report,
    secured_cluster,
    service_env,
    write,
)
from tests.support.alerts import firing_alert, publish_alert
from tests.support.metrics import scrape
from tests.support.webhook import WebhookReceiver

#: The scenario's premise: the alert reached JetStream within this many seconds of the kill
#: (the watch needs two missed 1 s heartbeats to notice its node died).
PROMPT = 1.5


async def _retried(what: str, call: Any) -> Any:
    """``call()`` until the cluster takes it (a stream electing its leader refuses for seconds)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not taken within 20 s") from None
            await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_silence_created_right_after_the_node_serving_the_notifiers_watch_died_mutes_the_alert(
    tmp_path: Path,
) -> None:
    # with the bus's credentials, as `make up` runs it: the notifier as its own identity (a
    # walk found its read of the silences refused by the policy, which no test without them
    # saw; a refusal in its log fails the scenario: tests/faults/conftest.py)
    cluster, nats = await secured_cluster(tmp_path, "silkill", metrics_max_bytes=16 << 20)
    receiver = WebhookReceiver()
    notify = write(
        tmp_path / "notify.yaml",
        f"channels:\n  hook: {{type: webhook, url: '{receiver.url('hook')}', timeout: 5s}}\n"
        "routes:\n  - channels: [hook]\n",
    )
    port = free_port()
    env = service_env(nats, identity="notifier", **cluster.env(), SF_METRICS_LISTEN=f"127.0.0.1:{port}")
    metrics = f"http://127.0.0.1:{port}/metrics"
    admin = await connect(nats, "fault-admin")
    notifier: ServiceProcess | None = None
    writer: Any = None
    try:
        js = admin.jetstream()
        await _retried("the streams", lambda: ensure_streams(js, nats))
        bucket = nats.subjects.bucket("silences")
        stream = f"KV_{bucket}"
        notifier = ServiceProcess("notifier", ["notifier", "--config", str(notify)], env, tmp_path).start()

        async def watching() -> bool:
            try:
                # its watch of the silences, and its durable on the alerts, which the step-downs
                # below ask about (asked for too early, the durable was not found yet)
                await js.consumer_info(nats.subjects.alerts_stream, DURABLE)
                return len(await _consumers(js, stream)) == 1
            except Exception:  # the cluster still settling
                return False

        await eventually(watching, "the notifier's watch of the silences and its durable", 30, notifier)
        [consumer] = (await _consumers(js, stream)).values()
        node = consumer.cluster.leader if consumer.cluster else None
        assert node is not None
        # Whatever else the node leads moves to the others: the kill then takes only the watch
        # (and, maybe, the cluster's meta leader) away, and the silence is written and the
        # alert taken at once, while the watch is behind.
        s = nats.subjects
        stepdowns = await move_leaders_off(
            admin,
            node,
            [f"KV_{s.bucket(b)}" for b in ("silences", "notify_state")] + [s.alerts_stream],
            [(s.alerts_stream, DURABLE)],
        )
        assert notifier is not None
        running = notifier
        await eventually(lambda: bool(scrape(metrics)), "the notifier", 30, running)

        # the test's own connection on a node that stays, so that it writes at once too
        spared = next(n for n in cluster.nodes if n.name != node)
        writer = await connect(msgspec.structs.replace(nats, url=spared.url, servers=[]), "fault-writer")
        kv = await writer.jetstream().key_value(bucket)
        kill9(cluster.node(node))
        killed_at = time.monotonic()
        window = Silence(
            id="maint-muted",
            matchers=[Matcher(name="host", value="silkill-muted")],
            starts_at=time.time() - 1,
            ends_at=time.time() + 3600,
            author="ana",
        )
        await _retried("the silence", lambda: kv.put(window.id, msgspec.json.encode(window)))
        silenced_after = time.monotonic() - killed_at
        await asyncio.sleep(FRESH_FOR)
        muted, other = firing_alert(host="silkill-muted"), firing_alert(host="silkill-other")
        for alert in (muted, other):
            await _retried("the alert", lambda alert=alert: publish_alert(writer, nats, alert))
        published_after = time.monotonic() - killed_at

        def suppressed() -> float:
            page = scrape(metrics)
            return page.get(("signalfire_notifier_suppressed_total", frozenset({("why", "silence")})), 0.0)

        await eventually(
            lambda: suppressed() + len(receiver.posted("hook")) >= 2, "both alerts decided", 30, notifier
        )
        await asyncio.sleep(1.0)  # anything more would come now
        page = scrape(metrics)
        checks = {
            dict(labels)["result"]: value
            for (name, labels), value in page.items()
            if name == "signalfire_notifier_silence_checks_total"
        }
    finally:
        if notifier is not None:
            notifier.stop()
        await admin.close()
        if writer is not None:
            await writer.close()
        receiver.close()
        await asyncio.to_thread(cluster.stop)
    sent = receiver.transitions("hook")
    muted_count = int(
        page.get(("signalfire_notifier_suppressed_total", frozenset({("why", "silence")})), 0.0)
    )
    report(
        "notifier-silence-node-kill",
        killed=node,
        stepdowns=stepdowns,
        silenced_after_kill_s=round(silenced_after, 2),
        alerts_after_kill_s=round(published_after, 2),
        sent=",".join("muted" if alert_id == muted.id else "other" for alert_id, _ in sent) or "-",
        suppressed=muted_count,
        checks=",".join(f"{k}:{int(v)}" for k, v in sorted(checks.items())) or "-",
    )
    assert published_after < PROMPT, (
        "the alert was not taken at once after the kill: the scenario did not happen"
    )
    assert notifier is not None
    assert sent == [(other.id, "firing")], log_tail(notifier)
    assert muted_count == 1


async def _consumers(js: Any, stream: str) -> dict[str, Any]:
    """The stream's consumers by name (the watches of it: ephemeral, one a watch)."""
    return {c.name: c for c in await js._jsm.consumers_info(stream)}
