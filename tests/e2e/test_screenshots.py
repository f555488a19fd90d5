"""Every page of the dashboard in both themes, in a real browser, with no console errors.

The screenshots go to the test's temporary directory; with ``SF_UPDATE_SCREENSHOTS=1``
(``make screenshots``) they are written to ``docs/screenshots/``, which the README shows.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from devstack import REPO, Stack

from tests.e2e.test_dashboard import publish, token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="needs Debian's chromium (make provision-test)"
    ),
]

#: (file name, route, what shows the page has loaded its data)
PAGES = [
    ("overview", "#/", "main h1"),
    ("host", "#/hosts/{host}", "main figure.chart"),
    ("alerts", "#/alerts", "#alert-rows tr"),
    ("alert", "#/alerts/{alert}", "main h1"),
    ("rules", "#/rules", "main table"),
    ("silences", "#/silences", "main h1"),
    ("notifications", "#/notifications", "main h1"),
    ("explore", "#/explore?host={host}&metric=cpu.usage_percent", "#explore-chart figure"),
    ("events", "#/events", "#event-chart figure"),
    ("tokens", "#/tokens", "#tokens table"),
]
BACKGROUNDS = {"light": "rgb(246, 247, 249)", "dark": "rgb(17, 20, 24)"}


def _get(running: Stack, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{running.gateway_url}/api/v1{path}",
        params=params,
        headers={"Authorization": f"Bearer {token(running)}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def scene(running: Stack) -> dict[str, str]:
    """Something on every page: this host's agent data, a firing alert, a silence, events."""
    this_host = socket.gethostname()
    publish(running, "ui-shot-1", [("load.1m", 80.0), ("cpu.usage_percent", 35.0)])
    headers = {"Authorization": f"Bearer {token(running)}"}
    silence = httpx.post(
        f"{running.gateway_url}/api/v1/silences",
        json={
            "matchers": [{"name": "host", "value": "staging-*", "regex": False, "equal": True}],
            "duration": "2h",
            "comment": "staging rebuild",
        },
        headers=headers,
        timeout=5,
    )
    assert silence.status_code == 201, silence.text
    events = httpx.post(
        f"{running.gateway_url}/api/v1/ingest/events",
        json={
            "host": "ui-shot-1",
            "time": time.time(),
            "events": [
                {"type": "login", "message": "alice from 10.0.0.7"},
                {"type": "deploy", "message": "shop v2.4.1", "labels": {"service": "shop"}},
            ],
        },
        headers=headers,
        timeout=5,
    )
    assert events.status_code == 202, events.text
    end = time.monotonic() + 30
    alert_id = ""
    republish = time.monotonic() + 1
    while time.monotonic() < end:
        if time.monotonic() >= republish:
            # Again every second, as an agent would: this scene is the session's first, and a
            # sample published while the evaluator is still subscribing is never judged.
            publish(running, "ui-shot-1", [("load.1m", 80.0), ("cpu.usage_percent", 35.0)])
            republish = time.monotonic() + 1
        hosts = {h["host"] for h in _get(running, "/hosts")["hosts"]}
        alerts = _get(running, "/alerts", host="ui-shot-1")["alerts"]
        if this_host in hosts and alerts:
            alert_id = alerts[0]["id"]
            break
        time.sleep(0.2)
    assert alert_id, "the agent's host and the alert never showed up"
    return {"host": this_host, "alert": alert_id}


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_page_renders_in_both_themes(
    browser: Any, running: Stack, scene: dict[str, str], theme: str, tmp_path: Path
) -> None:
    out = REPO / "docs" / "screenshots" if os.environ.get("SF_UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    # The system preference decides the theme until the user switches it.
    page = browser.new_page(viewport={"width": 1280, "height": 860}, color_scheme=theme)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(running.gateway_url + "/")
    page.fill("#token", token(running))
    page.click("button[type=submit]")
    page.wait_for_selector("#live.on", timeout=10_000)
    for name, path, ready in PAGES:
        page.evaluate(f"location.hash = {path.format(**scene)!r}")
        page.wait_for_selector(ready, timeout=10_000)
        page.wait_for_timeout(700)  # charts settle, the stream delivers a frame or two
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == BACKGROUNDS[theme], f"{name}: {background}"
        page.screenshot(path=str(out / f"{name}-{theme}.png"))
    assert not problems, problems
    page.close()
