"""Every control on every page of the dashboard, as a person uses it, in a real browser (Debian's
Chromium driven by Playwright) against the whole stack: sign in and out, silences from the
Silences page and from an alert, ack / unack / note / resolve, tokens, the explorer, the events
page, what a viewer sees, and that an API refusal is shown, never swallowed."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from devstack import Stack

from tests.e2e.support import wait_until
from tests.e2e.test_dashboard import open_signed_in, publish, token, viewer_token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="needs Debian's chromium (make provision-test)"
    ),
]

# Finds the words of an element's text that the layout split across two lines.
SPLIT_WORDS = """(selector) => {
  const split = [];
  const walker = document.createTreeWalker(document.querySelector(selector), NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    for (const m of node.data.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const rects = [...range.getClientRects()].filter((r) => r.width > 0);
      const tops = new Set(rects.map((r) => Math.round(r.top)));
      if (tops.size > 1) split.push(m[0]);
    }
  }
  return split;
}"""


def call(running: Stack, method: str, path: str, the_token: str | None = None, **kwargs: Any) -> Any:
    response = httpx.request(
        method,
        f"{running.gateway_url}/api/v1{path}",
        headers={"Authorization": f"Bearer {the_token or token(running)}"},
        timeout=10,
        **kwargs,
    )
    return response


def get(running: Stack, path: str, **params: Any) -> Any:
    response = call(running, "GET", path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def publish_events(running: Stack, host: str, events: list[dict[str, Any]]) -> None:
    body = {"host": host, "time": time.time(), "events": events}
    response = call(running, "POST", "/ingest/events", json=body)
    assert response.status_code == 202, response.text


def firing_alert(running: Stack, host: str, metric: str = "load.1m", value: float = 99.0) -> dict[str, Any]:
    sent = [0.0]

    def fired() -> Any:
        # Sent again now and then: a sample published while the evaluator is still starting
        # (this test may be the session's first) is not judged.
        if time.monotonic() - sent[0] > 3:
            publish(running, host, [(metric, value)])
            sent[0] = time.monotonic()
        return get(running, "/alerts", host=host, status="firing")["alerts"]

    alerts = wait_until(fired, 30, f"an alert on {host}", running)
    alert: dict[str, Any] = alerts[0]
    return alert


def error_banner(page: Any) -> Any:
    return page.locator("#errors")


def test_sign_in_and_sign_out(browser: Any, running: Stack) -> None:
    page = open_signed_in(browser, running, token(running))
    page.locator("#hosts tr.host a").first.wait_for(timeout=10_000)
    page.get_by_role("button", name="Sign out").click()
    page.locator("#token").wait_for(timeout=10_000)
    assert page.evaluate("localStorage.getItem('signalfire.token')") is None
    # Signed out means signed out after a reload too.
    page.reload()
    page.locator("#token").wait_for(timeout=10_000)
    assert not page.get_by_role("button", name="Sign out").is_visible()
    page.close()


def test_every_page_shows_its_data(browser: Any, running: Stack) -> None:
    # An agent with `labels: {env: dev}` puts the label on every sample it sends.
    body = {
        "host": "ui-labelled-1",
        "time": time.time(),
        "samples": [
            {"name": "cpu.usage_percent", "value": 99.9, "labels": {"env": "dev"}},
            {"name": "mem.used_percent", "value": 55.0, "labels": {"env": "dev"}},
        ],
    }
    assert call(running, "POST", "/ingest/metrics", json=body).status_code == 202
    firing_alert(running, "ui-pages-1")
    # HTTP ingest answers 202 before the sample is stored; the Overview's fleet charts read the
    # last hour once when the page opens (then every 30 s): open it once the sample is stored
    # (make test's parallel run lost that race once).
    wait_until(
        lambda: get(running, "/query", host="ui-labelled-1", metric="cpu.usage_percent", step="raw")[
            "series"
        ],
        10,
        "the labelled host's sample stored",
        running,
    )
    page = open_signed_in(browser, running, token(running))
    # Overview: the host's row, and fleet charts that include labelled series.
    page.locator("#hosts tr.host a", has_text="ui-labelled-1").wait_for(timeout=10_000)
    fleet_cpu = page.locator("#fleet figure[aria-label='Fleet CPU, last hour']")
    fleet_cpu.locator(".latest").get_by_text("ui-labelled-1: 99.9 %").wait_for(timeout=10_000)
    page.locator("#fleet figure[aria-label='Fleet memory, last hour']").wait_for(timeout=10_000)
    # The alert counts lead to the alerts of that severity.
    page.locator(".counts a", has_text="high").click()
    page.locator("#alert-rows tr", has_text="ui-pages-1").wait_for(timeout=10_000)
    assert page.locator("select[name=severity]").input_value() == "high"
    for path, ready in (
        ("#/hosts/ui-labelled-1", "figure[aria-label='CPU total']"),
        ("#/rules", "main table td:text('UiHighLoad')"),
        ("#/silences", "main table"),
        ("#/notifications", "main table"),
    ):
        page.evaluate(f"location.hash = {path!r}")
        page.wait_for_selector(ready, timeout=10_000)
    assert not error_banner(page).is_visible()
    page.close()


def test_a_silence_is_created_and_expired_on_the_silences_page(browser: Any, running: Stack) -> None:
    page = open_signed_in(browser, running, token(running), "#/silences")
    form = page.locator("#silence-form")
    form.locator("input[name=matchers]").fill("host=ui-silenced-1, rule=~Ui.*, severity!=low")
    form.locator("input[name=hours]").fill("2")
    form.locator("input[name=comment]").fill("maintenance window")
    form.get_by_role("button", name="Create silence").click()
    row = page.locator("#silences tr", has_text="maintenance window")
    row.wait_for(timeout=10_000)
    assert row.locator("td").first.inner_text() == "host=ui-silenced-1, rule=~Ui.*, severity!=low"
    assert row.locator("td").nth(1).inner_text() == "active"
    stored = next(s for s in get(running, "/silences")["silences"] if s["comment"] == "maintenance window")
    assert stored["matchers"] == [
        {"name": "host", "value": "ui-silenced-1"},
        {"name": "rule", "op": "=~", "value": "Ui.*"},
        {"name": "severity", "op": "!=", "value": "low"},
    ]
    assert stored["ends_at"] - stored["starts_at"] == pytest.approx(7200, abs=5)
    row.get_by_role("button", name="Expire").click()
    row.locator("td:text('expired')").wait_for(timeout=10_000)
    assert row.get_by_role("button", name="Expire").count() == 0
    after = next(s for s in get(running, "/silences")["silences"] if s["id"] == stored["id"])
    assert after["state"] == "expired"
    assert not error_banner(page).is_visible()
    page.close()


def test_an_api_refusal_is_shown_to_the_person(browser: Any, running: Stack) -> None:
    page = open_signed_in(browser, running, token(running), "#/silences")
    form = page.locator("#silence-form")
    # The API refuses the regex: its reason, naming the matcher, is on the page.
    form.locator("input[name=matchers]").fill("host=~(unclosed")
    form.get_by_role("button", name="Create silence").click()
    banner = error_banner(page)
    banner.get_by_text("Creating the silence failed").wait_for(timeout=10_000)
    assert "matchers[0].value" in banner.inner_text()
    # Text the page cannot read is named too, and nothing is sent.
    form.locator("input[name=matchers]").fill("just-a-word")
    form.get_by_role("button", name="Create silence").click()
    banner.get_by_text('"just-a-word" is not name=value').wait_for(timeout=10_000)
    page.get_by_role("button", name="Dismiss").click()
    assert not banner.is_visible()

    # A refusal the stack would not give on its own (NATS away), forced at the network.
    alert = firing_alert(running, "ui-refused-1")
    page.route(
        "**/api/v1/alerts/*/ack",
        lambda route: route.fulfill(
            status=503,
            content_type="application/json",
            body=json.dumps(
                {"error": {"code": "unavailable", "message": "NATS is not connected", "field": None}}
            ),
        ),
    )
    page.evaluate(f"location.hash = {'#/alerts/' + alert['id']!r}")
    page.get_by_role("button", name="Acknowledge").click()
    banner.get_by_text("NATS is not connected").wait_for(timeout=10_000)
    assert "Acknowledge UiHighLoad on ui-refused-1 failed" in banner.inner_text()
    # An empty note is refused by the API, and that is shown too.
    page.get_by_role("button", name="Add note").click()
    banner.get_by_text("a note must not be empty").wait_for(timeout=10_000)
    page.close()


def test_an_alert_is_acknowledged_noted_silenced_and_resolved(browser: Any, running: Stack) -> None:
    host = "ui-journey-1"
    alert = firing_alert(running, host)
    page = open_signed_in(browser, running, token(running), f"#/alerts/{alert['id']}")
    timeline = page.locator("#timeline")
    timeline.locator("li.timeline-firing").wait_for(timeout=10_000)

    page.get_by_role("button", name="Acknowledge").click()
    me = get(running, "/whoami")["name"]
    timeline.locator("li.timeline-ack", has_text=f"acknowledged by {me}").wait_for(timeout=10_000)
    assert "acknowledged" in page.locator("main dl").inner_text()
    page.get_by_role("button", name="Unacknowledge").click()
    timeline.locator("li.timeline-unack").wait_for(timeout=10_000)
    page.get_by_role("button", name="Acknowledge").wait_for(timeout=10_000)

    page.locator("#note").fill("disk latency on the SAN; watching it")
    page.get_by_role("button", name="Add note").click()
    note = timeline.locator("li.timeline-note .timeline-note")
    note.wait_for(timeout=10_000)
    assert note.inner_text() == "disk latency on the SAN; watching it"
    assert f"by {me}" in timeline.locator("li.timeline-note").inner_text()

    page.get_by_role("button", name="Silence 1 h").click()
    page.locator("#toast").get_by_text("silenced for 1 h").wait_for(timeout=10_000)
    silence = next(
        s for s in get(running, "/silences", state="active")["silences"] if alert["id"] in s["comment"]
    )
    assert [(m["name"], m["value"]) for m in silence["matchers"]] == [("rule", "UiHighLoad"), ("host", host)]
    assert silence["ends_at"] - silence["starts_at"] == pytest.approx(3600, abs=5)

    page.get_by_role("button", name="Resolve").click()
    page.locator("main dl").get_by_text("resolved").first.wait_for(timeout=10_000)
    assert get(running, f"/alerts/{alert['id']}")["status"] == "resolved"
    assert page.get_by_role("button", name="Resolve").count() == 0

    # The silence made from the alert is expired on the Silences page.
    page.evaluate("location.hash = '#/silences'")
    row = page.locator(f"#silences tr[data-silence='{silence['id']}']")
    row.get_by_role("button", name="Expire").click()
    row.locator("td:text('expired')").wait_for(timeout=10_000)
    assert not error_banner(page).is_visible()
    page.close()


def test_deliveries_wrap_between_words_on_a_phone(browser: Any, running: Stack) -> None:
    host = "e2e-wrap-1"
    alert = firing_alert(running, host, "cpu.usage_percent", 99.0)
    wait_until(
        lambda: get(running, f"/alerts/{alert['id']}")["deliveries"],
        30,
        "the alert's deliveries",
        running,
    )
    page = open_signed_in(browser, running, token(running), f"#/alerts/{alert['id']}", width=390)
    page.locator("#deliveries li").first.wait_for(timeout=10_000)
    assert page.evaluate(SPLIT_WORDS, "#deliveries") == []
    page.close()


def test_an_admin_creates_and_revokes_a_token(browser: Any, running: Stack) -> None:
    page = open_signed_in(browser, running, token(running))
    page.get_by_role("link", name="Tokens").click()
    form = page.locator("#token-form")
    form.locator("input[name=name]").fill("ui-journey-ci")
    form.locator("select[name=role]").select_option("operator")
    form.get_by_role("button", name="Create token").click()
    value = page.locator("#new-token-value").inner_text(timeout=10_000)
    whoami = call(running, "GET", "/whoami", value)
    assert whoami.json() == {"name": "ui-journey-ci", "role": "operator"}, whoami.text
    row = page.locator("#tokens tr", has_text="ui-journey-ci")
    row.get_by_role("button", name="Revoke").click()
    row.get_by_role("button", name="Revoke").wait_for(state="detached", timeout=10_000)
    assert call(running, "GET", "/whoami", value).status_code == 401
    assert not error_banner(page).is_visible()
    page.close()


def test_a_viewer_sees_no_action_buttons_anywhere(browser: Any, running: Stack) -> None:
    alert = firing_alert(running, "ui-viewer-1")
    silence = call(
        running,
        "POST",
        "/silences",
        json={
            "matchers": [{"name": "host", "value": "ui-viewer-1"}],
            "duration": "1h",
            "comment": "viewer sees",
        },
    )
    assert silence.status_code == 201, silence.text
    page = open_signed_in(browser, running, viewer_token(running), f"#/alerts/{alert['id']}")
    page.locator("#timeline li").first.wait_for(timeout=10_000)
    assert page.locator("main button").count() == 0
    assert page.locator("#note").count() == 0
    page.evaluate("location.hash = '#/silences'")
    page.locator("#silences tr", has_text="viewer sees").wait_for(timeout=10_000)
    assert page.locator("#silence-form").count() == 0
    assert page.get_by_role("button", name="Expire").count() == 0
    assert not page.get_by_role("link", name="Tokens").is_visible()
    page.close()


def test_the_explorer_charts_a_custom_metric_by_label_and_exports_it(
    browser: Any, running: Stack, tmp_path: Path
) -> None:
    host = "ui-app-1"
    for shop, value in (("eu", 120.0), ("us", 340.0)):
        body = {
            "host": host,
            "time": time.time(),
            "samples": [{"name": "app.checkout_ms", "value": value, "labels": {"shop": shop}}],
        }
        assert call(running, "POST", "/ingest/metrics", json=body).status_code == 202
    wait_until(
        lambda: get(running, "/series", host=host, metric="app.checkout_ms")["series"][1:],
        15,
        "both series",
        running,
    )
    page = open_signed_in(browser, running, token(running), "#/explore")
    page.locator("#explore-host option", has_text=host).wait_for(state="attached", timeout=10_000)
    page.select_option("#explore-host", host)
    page.locator("#explore-metric option[value='app.checkout_ms']").wait_for(state="attached", timeout=10_000)
    page.select_option("#explore-metric", "app.checkout_ms")
    page.locator("#explore-label-names").get_by_text("shop").wait_for(timeout=10_000)
    # The label pairs are offered as the filter is typed.
    page.locator("#explore-label-options option[value='shop=us']").wait_for(state="attached", timeout=10_000)
    page.fill("#explore-labels", "shop=us")
    page.select_option("#explore-agg", "max")
    page.get_by_role("button", name="Show", exact=True).click()
    figure = page.locator("#explore-chart figure")
    figure.locator(".latest").get_by_text("340").wait_for(timeout=10_000)
    rows = page.locator("#explore-table tbody tr")
    assert rows.count() == 1
    assert "shop=us" in rows.first.inner_text()
    # The view is in the URL: a reload shows the same chart.
    assert "metric=app.checkout_ms" in page.evaluate("location.hash")
    page.reload()
    page.locator("#explore-chart figure .latest").get_by_text("340").wait_for(timeout=10_000)
    with page.expect_download() as info:
        page.get_by_role("button", name="Export CSV").click()
    saved = tmp_path / "export.csv"
    info.value.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [(r["host"], r["metric"], json.loads(r["labels"]), float(r["value"])) for r in exported] == [
        (host, "app.checkout_ms", {"shop": "us"}, 340.0)
    ]
    assert not error_banner(page).is_visible()
    page.close()


def test_the_events_page_lists_and_counts_events_by_type(browser: Any, running: Stack) -> None:
    host = "ui-events-1"
    publish_events(
        running,
        host,
        [
            {"type": "login", "message": "alice from 10.0.0.7"},
            {"type": "login", "message": "bob from 10.0.0.9"},
            {"type": "login", "message": "carol from 10.0.0.4"},
            {"type": "deploy", "message": "shop v2.4.1", "labels": {"service": "shop"}},
        ],
    )
    wait_until(lambda: len(get(running, "/events", host=host)["events"]) == 4, 15, "the events", running)
    page = open_signed_in(browser, running, token(running), f"#/events?host={host}")
    totals = page.locator("#event-totals")
    totals.get_by_text("login").wait_for(timeout=10_000)
    assert totals.locator("[data-type=login]").inner_text() == "login: 3"
    assert totals.locator("[data-type=deploy]").inner_text() == "deploy: 1"
    page.locator("#event-chart figure").wait_for(timeout=10_000)
    wait_until(lambda: page.locator("#event-rows tr").count() == 4, 10, "the event list", running)
    page.select_option("#events-type", "deploy")
    page.get_by_role("button", name="Show", exact=True).click()
    page.locator("#event-rows tr", has_text="shop v2.4.1").wait_for(timeout=10_000)
    wait_until(lambda: page.locator("#event-rows tr").count() == 1, 5, "the filtered list", running)
    assert "service=shop" in page.locator("#event-rows tr").inner_text()
    assert "type=deploy" in page.evaluate("location.hash")
    assert not error_banner(page).is_visible()
    page.close()


def test_the_filters_sorts_ranges_and_theme(browser: Any, running: Stack) -> None:
    firing_alert(running, "ui-filter-b")
    publish(running, "ui-filter-a", [("cpu.usage_percent", 5.0)])
    page = open_signed_in(browser, running, token(running))
    theme = page.evaluate("document.documentElement.dataset.theme || ''")
    page.get_by_role("button", name="Switch colour theme").click()
    assert page.evaluate("document.documentElement.dataset.theme") in {"light", "dark"} - {theme}
    # Overview: a glob filter and a sort by name.
    page.fill("#host-filter", "ui-filter-*")
    page.select_option("#host-sort", "name")
    wait_until(
        lambda: page.locator("#hosts tr.host th").all_inner_texts() == ["ui-filter-a", "ui-filter-b"],
        10,
        "the filtered, sorted rows",
        running,
    )
    # Alerts: by host, then by status.
    page.evaluate("location.hash = '#/alerts'")
    page.locator("#alert-rows tr").first.wait_for(timeout=10_000)
    page.fill("input[name=host]", "ui-filter-b")
    page.press("input[name=host]", "Enter")

    def only_that_host() -> bool:
        rows = page.locator("#alert-rows tr").all_inner_texts()
        return bool(rows) and all("ui-filter-b" in row for row in rows)

    wait_until(only_that_host, 10, "the alerts of one host", running)
    page.select_option("select[name=status]", "resolved")
    page.locator("#alert-rows").get_by_text("No alerts match.").wait_for(timeout=10_000)
    # Host: a custom range (from/to) is a fixed range; no range button is pressed.
    page.evaluate("location.hash = '#/hosts/ui-filter-a'")
    page.locator("figure[aria-label='CPU total']").wait_for(timeout=10_000)
    page.evaluate(
        """() => {
          const local = (d) =>
            new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
          document.getElementById("from").value = local(new Date(Date.now() - 3600 * 1000));
          document.getElementById("to").value = local(new Date(Date.now() + 60 * 1000));
        }"""
    )
    page.get_by_role("button", name="apply").click()
    page.locator("button[data-range][aria-pressed=true]").wait_for(state="detached", timeout=10_000)
    page.locator("figure[aria-label='CPU total'] .latest").get_by_text("5.0 %").wait_for(timeout=10_000)
    assert not error_banner(page).is_visible()
    page.close()


def test_the_events_page_pages_on_and_the_explorer_exports_json(
    browser: Any, running: Stack, tmp_path: Path
) -> None:
    host = "ui-events-many"
    publish_events(running, host, [{"type": "login", "message": f"user {i}"} for i in range(105)])
    wait_until(
        lambda: len(get(running, "/events", host=host, limit=200)["events"]) == 105, 15, "events", running
    )
    page = open_signed_in(browser, running, token(running), f"#/events?host={host}")
    page.locator("#event-totals [data-type=login]").get_by_text("login: 105").wait_for(timeout=10_000)
    wait_until(lambda: page.locator("#event-rows tr").count() == 100, 10, "the first page", running)
    page.get_by_role("button", name="Show older").click()
    wait_until(lambda: page.locator("#event-rows tr").count() == 105, 10, "the older events", running)
    assert page.get_by_role("button", name="Show older").count() == 0

    publish(running, host, [("app.queue_depth", 7.0)])
    wait_until(lambda: get(running, "/series", host=host)["series"], 15, "the series", running)
    page.evaluate(f"location.hash = {'#/explore?host=' + host + '&metric=app.queue_depth'!r}")
    page.locator("#explore-chart figure .latest").get_by_text("7.00").wait_for(timeout=10_000)
    with page.expect_download() as info:
        page.get_by_role("button", name="Export JSON").click()
    saved = tmp_path / "export.json"
    info.value.save_as(saved)
    assert [(r["host"], r["metric"], r["value"]) for r in json.loads(saved.read_text())] == [
        (host, "app.queue_depth", 7.0)
    ]
    page.close()
