"""A notifier killed with SIGKILL in the middle of an escalation: the notifier started after
it sends the pending escalation step, once, and nothing twice. Real processes, real NATS,
a real HTTP receiver; real (short) time, since another process's clock cannot be injected."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig
from signalfire.events import AlertEvent, encode

pytestmark = pytest.mark.slow


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.bodies.append((self.path.strip("/"), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/{name}"

    def got(self, name: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(b["alert"]["id"], b["transition"]) for path, b in self.bodies if path == name]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_kill_9_mid_escalation_still_escalates_once(
    nc: Any, nats_config: NatsConfig, receiver: Receiver, tmp_path: Path
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
    first = ServiceProcess("notifier-1", ["notifier", "--config", str(config)], env, tmp_path).start()
    second = ServiceProcess("notifier-2", ["notifier", "--config", str(config)], env, tmp_path)
    try:
        alert_id = f"alert-{uuid.uuid4().hex[:8]}"
        now = time.time()
        alert = AlertEvent(
            id=alert_id,
            fingerprint=f"fp-{alert_id}",
            rule="HostDown",
            status="firing",
            severity="critical",
            host="web-1",
            starts_at=now,
            time=now,
        )
        await nc.jetstream().publish(nats_config.subjects.alerts("web-1"), encode(alert))
        await wait_until(lambda: len(receiver.got("ops")) == 1, "the firing message")
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)  # mid-escalation: the step is due in ~3 s
        first.proc.wait(timeout=10)
        assert receiver.got("oncall") == []

        second.start()
        await wait_until(lambda: len(receiver.got("oncall")) == 1, "the escalation after the restart")
        await asyncio.sleep(1.0)
        assert receiver.got("ops") == [(alert_id, "firing")]
        assert receiver.got("oncall") == [(alert_id, "escalation")]
    finally:
        first.stop()
        second.stop()
