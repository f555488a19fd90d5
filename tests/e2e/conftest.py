"""The whole stack as processes, shared by the end-to-end tests of one session.

Started the way `make up` starts it (``devstack.stack``): nats-server, PostgreSQL with
TimescaleDB, ``signalfire gateway``, ``evaluator``, ``notifier`` and an ``agent`` for this host,
all on free loopback ports. The webhook receiver of tests/support/webhook.py
(pytest-httpserver) records what the notifier sends.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from devstack import CHROMIUM_ARGS, Stack, free_port, stack

from tests.support.webhook import WebhookReceiver


@pytest.fixture(scope="session")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture(scope="session")
def running(tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver) -> Iterator[Stack]:
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
    # The dead man's switch: a loopback check down for maintenance, so each heartbeat fails and
    # the notifier says why (the Notifications page shows it).
    receiver.server.expect_request("/beat", method="GET").respond_with_data(
        "down for maintenance", status=503
    )
    beat_url = root / "heartbeat-url"
    beat_url.write_text(receiver.server.url_for("/beat"))
    notify = root / "notify.yaml"
    notify.write_text(
        f"""
heartbeat:
  url_file: {beat_url}
  every: 1s
  timeout: 1s
channels:
  hook:
    type: webhook
    url: {receiver.url("hook")}
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (no browser download), one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
