"""Helpers shared by the end-to-end tests: what the webhook receiver got, polling and API calls."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from devstack import Stack

from tests.support.webhook import WebhookReceiver

HOST = "e2e-web-1.example.com"


def statuses(receiver: WebhookReceiver) -> list[str]:
    """The status of every webhook message the ``hook`` channel got about the test host."""
    return [str(b.get("status")) for b in receiver.bodies("hook") if b.get("alert", {}).get("host") == HOST]


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
