"""The notifier's command line as a user runs it: ``notify check`` on the shipped configs
and on mistakes, ``notify test`` through email for the shipped template, and a running
``signalfire notifier`` taking a changed config (a new channel) on ``SIGHUP``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack import free_port

from signalfire.bus import NatsConfig
from signalfire.events import encode
from tests.support.alerts import firing_alert
from tests.support.httpserver import loopback_httpserver
from tests.support.metrics import scrape, total
from tests.support.polling import wait_until
from tests.support.smtp import Mailbox, smtp_server
from tests.support.webhook import WebhookReceiver

REPO = Path(__file__).resolve().parents[2]


def signalfire(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalfire.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **env},
        check=False,
    )


def test_notify_check_passes_the_shipped_configs() -> None:
    result = signalfire("notify", "check", "notify.example.yaml", "deploy/dev/notify.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok: notify.example.yaml: " in result.stdout and "ok: deploy/dev/notify.yaml: " in result.stdout


def test_notify_check_lists_every_mistake_as_file_line_field_reason(tmp_path: Path) -> None:
    bad = tmp_path / "notify.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            channels:
              mail:
                type: email
                host: smtp.example.com
                from: alerts@example.com
                to: [ops@example.com]
                subject: "{{ titel }}"
              hook:
                type: webhook
                url: http://127.0.0.1:9/hook
                timeout: soon
            routes:
              - channels: [mail, pager]
            tick: 0s
            """
        )
    )
    result = signalfire("notify", "check", str(bad), "deploy/dev/notify.yaml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:7: channels.mail.subject: unknown template variable titel; templates may use title, "
        "alerts, kind, digest, colour, channel, test, summary, facts, state",
        f"{bad}:11: channels.hook.timeout: expected a duration like 30s, 5m or 1h, got 'soon'",
        f"{bad}:13: routes[0].channels[1]: unknown channel 'pager' (configured: hook, mail)",
        f"{bad}:14: tick: must be more than 0",
    ]
    assert "ok: deploy/dev/notify.yaml" in result.stdout  # the other file is still checked


def test_notify_heartbeat_requests_the_shipped_configs_switch_once() -> None:
    with loopback_httpserver() as switch:
        switch.expect_request("/ping/hb-secret-1").respond_with_data("OK")
        result = signalfire(
            "notify",
            "heartbeat",
            "--config",
            "notify.example.yaml",
            SIGNALFIRE_HEARTBEAT_URL=switch.url_for("/ping/hb-secret-1"),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "the heartbeat was taken (HTTP 200); the notifier sends one every 60s\n"
        [(request, _)] = switch.log
        assert request.headers["User-Agent"].startswith("signalfire-notifier/")

        switch.clear()
        switch.expect_request("/ping/hb-secret-1").respond_with_data("no such check", status=404)
        refused = signalfire(
            "notify",
            "heartbeat",
            "--config",
            "notify.example.yaml",
            SIGNALFIRE_HEARTBEAT_URL=switch.url_for("/ping/hb-secret-1"),
        )
        assert refused.returncode == 1
        assert refused.stderr == "the heartbeat was not taken: HTTP 404: no such check\n"

    unset = signalfire("notify", "heartbeat", "--config", "notify.example.yaml", SIGNALFIRE_HEARTBEAT_URL="")
    assert unset.returncode == 2
    assert unset.stderr == (
        "signalfire: heartbeat.url_env: environment variable SIGNALFIRE_HEARTBEAT_URL is not set "
        "(it must hold the url)\n"
    )
    assert "hb-secret" not in result.stderr + refused.stderr + unset.stderr


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


def test_notify_test_mail_delivers_with_the_shipped_template(
    tmp_path: Path, smtp: tuple[Mailbox, int]
) -> None:
    box, port = smtp
    config = tmp_path / "notify.yaml"
    config.write_text(
        "channels:\n  mail:\n    type: email\n    host: 127.0.0.1\n"
        f"    port: {port}\n    security: none\n    from: a@example.com\n    to: [b@example.com]\n"
    )
    result = signalfire("notify", "test", "mail", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "sent a test notification through mail (email)" in result.stdout
    [(_, mail)] = box.messages
    assert mail["Subject"].startswith("[TEST] SignalfireTestNotification")


async def test_sighup_reloads_channels_and_routes_of_a_running_notifier(
    tmp_path: Path, nats_config: NatsConfig, nc: Any
) -> None:
    receivers = WebhookReceiver()
    metrics = free_port()
    url = f"http://127.0.0.1:{metrics}/metrics"
    config = tmp_path / "notify.yaml"
    base = (
        f"watch_interval: 0s\nmetrics_listen: 127.0.0.1:{metrics}\n"
        f"nats:\n  url: {nats_config.url}\n  prefix: {nats_config.prefix}\n"
    )
    config.write_text(base + "channels:\n  log:\n    type: log\nroutes:\n  - channels: [log]\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalfire.cli",
        "notifier",
        "--config",
        str(config),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_until(lambda: bool(scrape(url)), "the notifier to start", 20)
        config.write_text(
            base + f"channels:\n  hook:\n    type: webhook\n    url: {receivers.url('hook')}\n"
            "routes:\n  - channels: [hook]\n"
        )
        process.send_signal(signal.SIGHUP)
        reloaded = "signalfire_notifier_reloads_total"
        await wait_until(lambda: total(scrape(url), reloaded, result="ok") == 1, "the reload", 20)
        alert = firing_alert("sighup-1", fingerprint="fp-sighup")
        await nc.jetstream().publish(nats_config.subjects.alerts("web-1"), encode(alert))
        await wait_until(lambda: receivers.transitions("hook") == [("sighup-1", "firing")], "the webhook", 20)
        # the delivery is timed in the channel's histogram (observed once the POST is answered)
        timed = "signalfire_notifier_delivery_duration_seconds"
        await wait_until(lambda: total(scrape(url), f"{timed}_count", channel="hook") == 1, "the timing", 20)
        found = scrape(url)
        bounds = [dict(labels)["le"] for name, labels in found if name == f"{timed}_bucket"]
        assert len(bounds) > 1 and "+Inf" in bounds
        assert total(found, f"{timed}_bucket", channel="hook", le="+Inf") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        receivers.close()
    assert "notifier config reloaded" in stderr.decode()
