"""The whole stack as processes, shared by the end-to-end tests of one session.

Started the way `make up` starts it (``devstack.stack``): nats-server, PostgreSQL with
TimescaleDB, ``signalfire gateway``, ``evaluator``, ``notifier`` and an ``agent`` for this host,
all on free loopback ports. A stdlib HTTP server stands in for the webhook receiver.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from devstack import Stack, free_port, stack

HOST = "e2e-web-1.example.com"


class Receiver:
    """A webhook receiver: records every POST body it gets."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def statuses(self) -> list[str]:
        return [str(b.get("status")) for b in self.bodies if b.get("alert", {}).get("host") == HOST]


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()


@pytest.fixture(scope="session")
def running(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    rules = root / "rules.yaml"
    rules.write_text(
        """
rules:
  - name: E2EHighCPU
    metric: cpu.usage_percent
    where: {host: "e2e-*"}
    condition: "> 90"
    resolve: "< 50"
    severity: critical
    annotations:
      summary: "CPU {{ value | round(1) }}% on {{ host }}"
  - name: UiHighLoad
    metric: load.1m
    where: {host: "ui-*"}
    condition: "> 50"
    resolve: "< 10"
    severity: high
    annotations:
      summary: '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> load {{ value }}'
"""
    )
    notify = root / "notify.yaml"
    notify.write_text(
        f"""
channels:
  hook:
    type: webhook
    url: {receiver.url}
  dev-log:
    type: log
routes:
  - match: {{severity: critical}}
    channels: [hook, dev-log]
"""
    )
    agent = root / "agent.yaml"
    agent.write_text("interval: 1s\n")
    with stack(
        root / "state",
        free_port(),
        free_port(),
        free_port(),
        rules=rules,
        notify_config=notify,
        agent_config=agent,
        durable=False,
    ) as s:
        yield s


def wait_until(check: Any, timeout: float, what: str, stack_: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        dead = stack_.dead()
        if dead:
            logs = "\n".join(f"--- {s.name}\n{s.log_path.read_text()[-3000:]}" for s in dead)
            pytest.fail(f"service died while waiting for {what}:\n{logs}")
        time.sleep(0.05)
    logs = "\n".join(f"--- {s.name}\n{s.log_path.read_text()[-1500:]}" for s in stack_.services)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def api(running: Stack, path: str, **params: Any) -> Any:
    token = running.token_file.read_text().strip()
    response = httpx.get(
        f"{running.gateway_url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert response.status_code == 200, response.text
    return response.json()


