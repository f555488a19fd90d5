"""The Overview at fleet size: 2,100 hosts publishing to a private NATS, the page in Chromium.

A gateway of its own (devstack's private nats-server, PostgreSQL and ``signalfire gateway``),
so the counts are exact: every host a script publishes, and nothing another test left. The
hosts publish every few seconds from a thread (Playwright's sync API owns the test's event
loop); a host past the API's first page (500 hosts by name) has three critical alerts.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from devstack import free_port, private_servers, start_gateway

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import AlertEvent, MetricBatch, Sample, Severity, encode
from tests.e2e.test_accessibility import AXE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="needs Debian's chromium (make provision-test)"
    ),
]

HOSTS = 2100
ENVS = ("prod", "staging", "dev")
ROLES = ("web", "db")
#: Past the API's first page of 500 hosts by name: the page before this change never showed it.
FAILING = "fleet-1733"
ROUND_SECONDS = 5.0


def name(i: int) -> str:
    return f"fleet-{i:04d}"


def labels(i: int) -> dict[str, str]:
    return {"env": ENVS[i % len(ENVS)], "role": ROLES[i % len(ROLES)]}


class Publisher:
    """Every host's batch every ``ROUND_SECONDS``, from a thread with its own event loop."""

    def __init__(self, nats_url: str) -> None:
        self.config = NatsConfig(url=nats_url)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.nc: Any = None
        self.task: Future[None] | None = None
        #: CPU values set by :meth:`publish`, which the rounds keep sending.
        self.cpu: dict[int, float] = {}

    def start(self) -> None:
        self.thread.start()
        self.call(self._connect())
        self.task = asyncio.run_coroutine_threadsafe(self._rounds(), self.loop)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _connect(self) -> None:
        self.nc = await connect(self.config, "e2e-fleet")
        await ensure_streams(self.nc.jetstream(), self.config)

    async def _rounds(self) -> None:
        while True:
            began = time.monotonic()
            await self.publish_all(time.time())
            await asyncio.sleep(max(0.0, ROUND_SECONDS - (time.monotonic() - began)))

    async def publish_all(self, when: float) -> None:
        js = self.nc.jetstream()
        for start in range(0, HOSTS, 300):
            await asyncio.gather(
                *(
                    js.publish(
                        self.config.subjects.metrics(name(i)), encode(self.batch(i, when, self.cpu.get(i)))
                    )
                    for i in range(start, min(HOSTS, start + 300))
                )
            )

    @staticmethod
    def batch(i: int, when: float, cpu: float | None = None) -> MetricBatch:
        return MetricBatch(
            host=name(i),
            time=when,
            labels=labels(i),
            samples=[
                Sample(name="cpu.usage_percent", value=cpu if cpu is not None else float(i % 60)),
                Sample(name="mem.used_percent", value=40.0),
                Sample(name="disk.used_percent", value=30.0, labels={"mount": "/"}),
            ],
        )

    def publish(self, i: int, cpu: float) -> None:
        """One batch of host ``i`` now, with CPU at ``cpu`` (and so on in every round)."""

        async def go() -> None:
            self.cpu[i] = cpu
            await self.nc.jetstream().publish(
                self.config.subjects.metrics(name(i)), encode(self.batch(i, time.time(), cpu))
            )

        self.call(go())

    def fire(self, host: str, severity: Severity, n: int, status: str = "firing") -> None:
        """``n`` alerts of ``severity`` on ``host`` firing (or resolved: ``status``), as the
        evaluator publishes them."""

        async def go() -> None:
            now = time.time()
            for k in range(n):
                event = AlertEvent(
                    id=f"{host}-{severity}-{k}",
                    fingerprint=f"fp-{host}-{severity}-{k}",
                    rule=f"Fleet{severity.title()}{k}",
                    status="firing" if status == "firing" else "resolved",
                    severity=severity,
                    host=host,
                    starts_at=now,
                    time=now,
                )
                await self.nc.jetstream().publish(self.config.subjects.alerts(host), encode(event))

        self.call(go())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.nc is not None:
            self.call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Fleet:
    url: str
    token: str
    publisher: Publisher

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(
            f"{self.url}/api/v1{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root: Path = tmp_path_factory.mktemp("fleet")
    with private_servers(root) as (nats, postgres):
        port = free_port()
        gateway = start_gateway(
            nats.url,
            postgres.create_database("signalfire"),
            port,
            log_dir=root,
            token_file=root / "admin-token",
            extra_env={"SF_LOG_LEVEL": "warning"},
        )
        publisher = Publisher(nats.url)
        try:
            publisher.start()
            publisher.fire(FAILING, "critical", 3)
            publisher.fire("fleet-0042", "high", 1)
            found = Fleet(f"http://127.0.0.1:{port}", (root / "admin-token").read_text().strip(), publisher)
            deadline = time.monotonic() + 90
            while True:
                listed = found.get("/hosts", limit=5000)["hosts"]
                failing = [h for h in listed if h["host"] == FAILING]
                if len(listed) == HOSTS and failing and failing[0]["alerts"]["critical"] == 3:
                    break
                assert time.monotonic() < deadline, f"{len(listed)} of {HOSTS} hosts stored in time"
                time.sleep(0.5)
            yield found
        finally:
            publisher.stop()
            gateway.stop()


def open_overview(
    browser: Any, fleet: Fleet, *, before: str | None = None, workers: list[str] | None = None
) -> Any:
    """The Overview, signed in and live; ``before``: a script run before the page's own,
    ``workers``: collects the URLs of the workers the page starts."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    if before is not None:
        page.add_init_script(before)
    if workers is not None:
        page.on("worker", lambda worker: workers.append(worker.url))
    page.goto(fleet.url + "/")
    page.fill("#token", fleet.token)
    page.click("button[type=submit]")
    page.locator("#fleet-summary", has_text=f"{HOSTS:,} hosts:").wait_for(timeout=30_000)
    page.wait_for_selector("#live.on", timeout=20_000)
    return page


def shown_hosts(page: Any) -> list[str]:
    """The host names of the rows in the page, in order (only the rows in view exist)."""
    names: list[str] = page.locator("#hosts tbody tr.host th").all_inner_texts()
    return names


def wait_for(check: Any, what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_every_host_is_counted_and_a_failing_host_past_the_first_page_leads_worst_first(
    browser: Any, fleet: Fleet
) -> None:
    # The API's default page holds 500 hosts: the failing one is not on it.
    assert FAILING not in {h["host"] for h in fleet.get("/hosts")["hosts"]}
    page = open_overview(browser, fleet)
    summary = page.locator("#fleet-summary").inner_text()
    assert summary.startswith(f"{HOSTS:,} hosts: ")
    counts = " ".join(page.locator(".counts").inner_text().split())
    assert "critical: 3" in counts and "high: 1" in counts and "medium: 0" in counts
    assert page.locator("#host-sort").input_value() == "health"
    wait_for(lambda: shown_hosts(page)[:1] == [FAILING], "the failing host on top")
    row = page.locator("#hosts tr.host", has_text=FAILING)
    assert "critical 3" in " ".join(row.inner_text().split())
    # A row per host, never 2,100 of them in the page.
    assert len(shown_hosts(page)) < 80
    page.close()


def test_grouping_by_env_puts_the_worst_group_first_with_its_counts(browser: Any, fleet: Fleet) -> None:
    page = open_overview(browser, fleet)
    page.select_option("#host-group", "env")
    env = labels(int(FAILING.split("-")[1]))["env"]
    first_group = page.locator("#hosts tr.group").first
    wait_for(
        lambda: first_group.inner_text().startswith(f"env = {env}: 700 hosts"), "the failing host's env first"
    )
    assert "critical 3" in " ".join(first_group.inner_text().split())
    assert shown_hosts(page)[0] == FAILING
    # Every group comes with its own count: 2,100 hosts in three envs.
    page.select_option("#host-sort", "name")
    groups = wait_for(
        lambda: (
            page.locator("#hosts tr.group").all_inner_texts()
            if page.locator("#hosts tr.group").count()
            else None
        ),
        "the groups by name",
    )
    assert groups[0].startswith("env = dev: 700 hosts")
    # Scrolling on reaches the other groups, built as they come into view.
    page.evaluate(
        "document.getElementById('hosts').scrollTop = document.getElementById('hosts').scrollHeight"
    )
    # The last group is staging (i % 3 == 1), its last host fleet-2098.
    wait_for(lambda: shown_hosts(page)[-1:] == ["fleet-2098"], "the last group's last host at the end")
    assert all(labels(int(n.split("-")[1]))["env"] == "staging" for n in shown_hosts(page))
    page.close()


def test_filters_by_name_and_by_label_count_what_matches(browser: Any, fleet: Fleet) -> None:
    page = open_overview(browser, fleet)
    page.fill("#host-filter", "fleet-17*")
    page.locator("#fleet-summary", has_text="100 match the filter").wait_for(timeout=10_000)
    names = shown_hosts(page)
    assert names[0] == FAILING and all(n.startswith("fleet-17") for n in names)
    # Label terms: every term must match (i % 6 == 3: role db, env prod).
    page.fill("#host-filter", "role=db env=prod")
    page.locator("#fleet-summary", has_text="350 match the filter").wait_for(timeout=10_000)
    assert all(int(n.split("-")[1]) % 6 == 3 for n in shown_hosts(page))
    page.fill("#host-filter", "")
    wait_for(lambda: "match" not in page.locator("#fleet-summary").inner_text(), "the filter cleared")
    page.close()


def test_scrolling_builds_the_rows_in_view_on_demand(browser: Any, fleet: Fleet) -> None:
    page = open_overview(browser, fleet)
    page.select_option("#host-sort", "name")
    wait_for(lambda: shown_hosts(page)[:1] == ["fleet-0000"], "the rows by name")
    assert "fleet-2099" not in shown_hosts(page)
    # The page stays one screen or so tall (the tiles made 28,000 px of 500 hosts).
    assert page.evaluate("document.documentElement.scrollHeight") < 3000
    page.evaluate("document.getElementById('hosts').scrollTop = 36 * 1050")
    wait_for(lambda: "fleet-1050" in shown_hosts(page), "the rows in the middle")
    page.evaluate(
        "document.getElementById('hosts').scrollTop = document.getElementById('hosts').scrollHeight"
    )
    wait_for(lambda: shown_hosts(page)[-1:] == ["fleet-2099"], "the last row at the end")
    names = shown_hosts(page)
    assert len(names) < 80 and "fleet-0000" not in names
    # In order, with no gap: the rows shown are consecutive hosts.
    numbers = [int(n.split("-")[1]) for n in names]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    page.close()


def test_a_live_sample_patches_its_row_in_place(browser: Any, fleet: Fleet) -> None:
    page = open_overview(browser, fleet)
    page.select_option("#host-sort", "name")
    wait_for(lambda: shown_hosts(page)[:1] == ["fleet-0000"], "the rows by name")
    # Mark the row elements: a patched row is the same element, with new text.
    page.evaluate("document.querySelectorAll('#hosts tr.host').forEach((tr) => { tr.__kept = true; })")
    ends = """() => {
      const line = document.querySelector("#hosts tr.host[data-host='fleet-0001'] polyline");
      const box = line.ownerSVGElement.getBoundingClientRect();
      const points = line.points;
      if (!points.numberOfItems) return { n: 0 };
      const at = (p) => new DOMPoint(p.x, p.y).matrixTransform(line.getScreenCTM()).y - box.top;
      const n = points.numberOfItems;
      return { n, first: at(points.getItem(0)), last: at(points.getItem(n - 1)), height: box.height };
    }"""
    # A sample of the host's rounds (1 %) on the page's trend first.
    wait_for(lambda: page.evaluate(ends)["n"] >= 1, "a first sample in the trend", timeout=ROUND_SECONDS * 3)
    fleet.publisher.publish(1, 97.5)
    cpu = page.locator("#hosts tr.host[data-host='fleet-0001'] td").nth(2)
    cpu.get_by_text("97.5 %").wait_for(timeout=10_000)
    assert page.evaluate("[...document.querySelectorAll('#hosts tr.host')].every((tr) => tr.__kept)")
    # The trend ends with the sample: its last point at the top of the box (97.5 is the
    # highest), the samples before it (1 %) at the bottom.
    wait_for(lambda: page.evaluate(ends)["last"] < 1, "the trend's last point at the top")
    trend = page.evaluate(ends)
    assert trend["n"] >= 2 and trend["first"] > trend["height"] - 2, trend
    page.close()


def test_every_severity_mark_is_a_shape_in_its_colour_beside_its_word(browser: Any, fleet: Fleet) -> None:
    page = open_overview(browser, fleet)
    wait_for(lambda: shown_hosts(page)[:1] == [FAILING], "the failing host on top")
    marks = page.evaluate(
        """() => [...document.querySelectorAll('.counts .sev, #hosts tr.host .sev, #hosts tr.host .status')]
          .map((badge) => {
            const mark = badge.firstElementChild;
            const drawn = getComputedStyle(mark);
            const box = mark.getBoundingClientRect();
            // The side that draws the shape: a triangle has transparent sides.
            const ink = [drawn.borderTopColor, drawn.borderBottomColor, drawn.borderLeftColor]
              .find((c) => c !== 'rgba(0, 0, 0, 0)');
            return { kind: badge.className, text: badge.textContent, hidden: mark.getAttribute('aria-hidden'),
              glyphs: mark.textContent, colour: getComputedStyle(badge).color, ink,
              size: Math.min(box.width, box.height) };
          })"""
    )
    by_kind = {mark["kind"]: mark for mark in marks}
    expected = {"sev sev-critical", "sev sev-high", "sev sev-medium", "sev sev-low", "status status-up"}
    assert expected <= set(by_kind)
    for mark in marks:
        # The word for screen readers and sighted users alike; the mark a shape, no emoji.
        assert mark["text"].strip() == mark["kind"].split("-", 1)[1], mark
        assert mark["hidden"] == "true" and mark["glyphs"] == "", mark
        assert mark["ink"] == mark["colour"] and mark["size"] >= 4, mark
    colours = {by_kind[f"sev sev-{sev}"]["colour"] for sev in ("critical", "high", "medium", "low")}
    assert len(colours) == 4
    page.close()


def test_an_alert_on_the_last_host_moves_it_up_and_into_the_totals_while_the_page_is_open(
    browser: Any, fleet: Fleet
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(fleet.url + "/")
    page.fill("#token", fleet.token)
    page.click("button[type=submit]")
    page.locator("#fleet-summary", has_text=f"{HOSTS:,} hosts:").wait_for(timeout=30_000)
    # The whole fleet came in one answer, not page after page of /hosts.
    api = [url.split("/api/v1", 1)[1] for url in asked if "/api/v1/" in url]
    assert api.count("/fleet") == 1 and not [path for path in api if path.startswith("/hosts?limit")]
    page.wait_for_selector("#live.on", timeout=20_000)
    counts = page.locator(".counts")
    wait_for(lambda: shown_hosts(page)[:2] == [FAILING, "fleet-0042"], "the two failing hosts on top")
    last = name(HOSTS - 1)
    try:
        fleet.publisher.fire(last, "critical", 1)
        # Health 60: second, after the host with three critical alerts (0), before every other.
        wait_for(lambda: shown_hosts(page)[:2] == [FAILING, last], "the last host moved up")
        assert "critical: 4" in " ".join(counts.inner_text().split())
    finally:
        fleet.publisher.fire(last, "critical", 1, status="resolved")
    wait_for(lambda: last not in shown_hosts(page)[:5], "the resolved host back among the healthy ones")
    wait_for(lambda: "critical: 3" in " ".join(counts.inner_text().split()), "the critical total back to 3")
    page.close()


def test_the_periodic_reload_and_the_fleet_charts_follow_the_fleet_while_the_page_is_open(
    browser: Any, fleet: Fleet
) -> None:
    # What only the 30 s reloads bring: a host's health (the stream carries values, not the
    # gateway's score), read by a worker started with the page; and the busiest hosts of the
    # fleet charts, redrawn in the charts that are there (an open "Show as table" stays open
    # and shows them too).
    workers: list[str] = []
    page = open_overview(browser, fleet, workers=workers)
    page.select_option("#host-sort", "name")
    wait_for(lambda: shown_hosts(page)[:1] == ["fleet-0000"], "the rows by name")
    cpu_chart = page.locator("#fleet figure", has_text="Fleet CPU, last hour")
    cpu_chart.wait_for(timeout=30_000)
    cpu_chart.locator("summary").click()
    page.evaluate("document.querySelectorAll('#fleet figure').forEach((f) => { f.__kept = true; })")
    health = page.locator("#hosts tr.host[data-host='fleet-0007'] td").nth(1)
    assert health.inner_text() == "100 / 100"
    try:
        # The busiest host of the fleet from now on (every other is below 60 %).
        fleet.publisher.publish(7, 99.0)
        page.locator("#hosts tr.host[data-host='fleet-0007'] td").nth(2).get_by_text("99.0 %").wait_for(
            timeout=10_000
        )
        # CPU over 80 % costs health (19 points at 99 %): shown after the next reload.
        wait_for(lambda: health.inner_text() == "81 / 100", "the reloaded health of fleet-0007", timeout=45)
        assert any(url.endswith("/ui/src/fleetworker.js") for url in workers)
        wait_for(
            lambda: "fleet-0007" in cpu_chart.locator(".u-legend").inner_text(),
            "fleet-0007 in the CPU chart's legend",
            timeout=45,
        )
        # The table is redrawn with the canvas, at the next frame after the legend's rename.
        wait_for(
            lambda: "fleet-0007" in cpu_chart.locator("details table").inner_text(),
            "fleet-0007 in the CPU chart's open table",
            timeout=5,
        )
        assert page.evaluate("[...document.querySelectorAll('#fleet figure')].every((f) => f.__kept)")
        assert cpu_chart.locator("details").evaluate("(d) => d.open")
        # Every series the legend names is drawn: as many series as entries, ten at most.
        labels = cpu_chart.locator(".u-legend tr.u-series .u-label").all_inner_texts()
        assert 2 <= len(labels) <= 11 and len(set(labels)) == len(labels)
    finally:
        fleet.publisher.publish(7, 7.0)
    page.close()


#: Run before the page's scripts: counts the WebSockets the page's own thread opens.
COUNT_SOCKETS = """
window.__sockets = 0;
window.WebSocket = class extends WebSocket {
  constructor(...args) { super(...args); window.__sockets += 1; }
};
"""


def live_updates_reach_a_row_in_view_and_the_totals(page: Any, fleet: Fleet) -> None:
    """A sample patches its row in view; an alert fires into the totals and resolves out of them."""
    page.select_option("#host-sort", "name")
    wait_for(lambda: shown_hosts(page)[:1] == ["fleet-0000"], "the rows by name")
    counts = page.locator(".counts")
    assert "medium: 0" in " ".join(counts.inner_text().split())
    try:
        fleet.publisher.publish(3, 93.5)
        page.locator("#hosts tr.host[data-host='fleet-0003'] td").nth(2).get_by_text("93.5 %").wait_for(
            timeout=10_000
        )
        fleet.publisher.fire("fleet-0003", "medium", 1)
        wait_for(
            lambda: "medium: 1" in " ".join(counts.inner_text().split()), "the medium alert in the totals"
        )
        row = page.locator("#hosts tr.host[data-host='fleet-0003']")
        wait_for(lambda: "medium 1" in " ".join(row.inner_text().split()), "the alert in its row")
    finally:
        fleet.publisher.fire("fleet-0003", "medium", 1, status="resolved")
        fleet.publisher.publish(3, 3.0)
    wait_for(lambda: "medium: 0" in " ".join(counts.inner_text().split()), "the medium total back to 0")


def test_the_live_stream_is_read_off_the_page_s_thread_and_still_updates_the_rows_and_totals(
    browser: Any, fleet: Fleet
) -> None:
    # 2,100 hosts send 1,260 samples a second here (3,000 at 10,000 hosts): parsed in a worker
    # that hands the page one digest of what changed every 250 ms (bench/fleet_overview.py).
    workers: list[str] = []
    page = open_overview(browser, fleet, before=COUNT_SOCKETS, workers=workers)
    assert page.evaluate("window.__sockets") == 0
    assert any(url.endswith("/ui/src/streamworker.js") for url in workers)
    live_updates_reach_a_row_in_view_and_the_totals(page, fleet)
    page.close()


def test_where_no_worker_can_run_the_page_reads_the_stream_and_the_fleet_itself(
    browser: Any, fleet: Fleet
) -> None:
    page = open_overview(browser, fleet, before=COUNT_SOCKETS + "delete window.Worker;")
    assert page.evaluate("window.__sockets") == 1
    assert page.locator("#fleet-summary").inner_text().startswith(f"{HOSTS:,} hosts: ")
    live_updates_reach_a_row_in_view_and_the_totals(page, fleet)
    page.close()


@pytest.mark.skipif(not AXE.exists(), reason="needs the dashboard's npm packages (make provision)")
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_fleet_table_grouped_meets_wcag_21_aa(browser: Any, fleet: Fleet, theme: str) -> None:
    # bypass_csp only so the test can inject axe; the dashboard itself runs under its CSP.
    page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme=theme, bypass_csp=True)
    page.goto(fleet.url + "/")
    page.fill("#token", fleet.token)
    page.click("button[type=submit]")
    page.locator("#fleet-summary", has_text=f"{HOSTS:,} hosts:").wait_for(timeout=30_000)
    page.select_option("#host-group", "env")
    page.locator("#hosts tr.group").first.wait_for(timeout=10_000)
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => await axe.run(document, {
            runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
        })"""
    )
    found = [
        f"{v['id']}: {v['help']} at {[n['target'] for n in v['nodes'][:3]]}" for v in result["violations"]
    ]
    page.close()
    assert not found, "\n".join(found)
