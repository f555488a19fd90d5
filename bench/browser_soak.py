"""Dashboard soak: the Host page (16 live charts) open in headless Chromium for 30 minutes.

Starts a private nats-server, PostgreSQL + TimescaleDB (devstack; run
``deploy/dev/provision-postgres.sh`` first, ``make test`` does) and a real ``signalfire
gateway`` process. One host publishes every metric of the Host page's 16 charts (read from
``CHARTS`` in ``web/src/pages/host.js``; per-core, per-device and per-interface series
included) to JetStream every second, after one hour of history at 10 s spacing, so the 1 h
window starts full.

Two tabs, each in its own browser context, signed in with the admin token:

- **soak**: the Host page on its "1 h" range, which follows the stream (1 s samples folded
  into the range's 10 s buckets, the newest bucket redrawn every second);
- **reference**: the same page on a fixed custom range over the same hour — the same stream
  frames arrive but no chart updates, so its heap drift is the floor of the measurement.

Every minute both tabs get ``HeapProfiler.collectGarbage`` then ``Runtime.getHeapUsage``
(CDP). Long tasks come from a ``PerformanceObserver({type: "longtask", buffered: true})``
installed before the page's scripts run. Reported: heap at minute 5 and at the end, the
growth between them for both tabs and their ratio, and count and longest of the long tasks
(> 50 ms) after the page loaded.

    uv run python bench/browser_soak.py [--minutes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

from devstack import CHROMIUM_ARGS, ServiceProcess, free_port, private_servers, start_gateway
from playwright.async_api import Browser, Page, async_playwright

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import MetricBatch, Sample, encode

HOST_JS = (
    Path(__file__).resolve().parents[1] / "services/gateway/src/signalfire/gateway/web/src/pages/host.js"
)
HOST = "soak-1"
#: Labels per metric family, as the collector names them.
LABELS: dict[str, list[dict[str, str]]] = {
    "cpu.core.": [{"core": str(c)} for c in range(4)],
    "disk.used_percent": [{"mount": "/"}, {"mount": "/var"}],
    "disk.": [{"device": "sda"}, {"device": "sdb"}],
    "net.": [{"interface": "eth0"}, {"interface": "eth1"}],
}
LONGTASK_OBSERVER = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push([e.startTime, e.duration]);
}).observe({ type: "longtask", buffered: true });
"""


def chart_metrics() -> list[str]:
    """The metric of each chart in the Host page's CHARTS list."""
    source = HOST_JS.read_text(encoding="utf-8")
    block = source[source.index("const CHARTS") : source.index("];", source.index("const CHARTS"))]
    return re.findall(r'\["[^"]+",\s*"([^"]+)"\]', block)


def series_of(metric: str) -> list[dict[str, str]]:
    for prefix, labels in LABELS.items():
        if metric.startswith(prefix):
            return labels
    return [{}]


def batch(metrics: list[str], when: float, n: int) -> MetricBatch:
    samples = [
        Sample(name=m, value=float((n * 7 + i * 13 + j * 5) % 97), labels=labels)
        for i, m in enumerate(metrics)
        for j, labels in enumerate(series_of(m))
    ]
    return MetricBatch(host=HOST, time=when, samples=samples)


async def publisher(nats_url: str, metrics: list[str], stop: asyncio.Event, counter: list[int]) -> None:
    config = NatsConfig(url=nats_url)
    nc = await connect(config, "bench-soak")
    js = nc.jetstream()
    subject = config.subjects.metrics(HOST)
    try:
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            await js.publish(subject, encode(batch(metrics, time.time(), n)))
            counter[0] = n
            n += 1
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        await nc.close()


async def backfill(nats_url: str, metrics: list[str]) -> None:
    """One hour of history at 10 s spacing, so the page's 1 h window opens full."""
    config = NatsConfig(url=nats_url)
    nc = await connect(config, "bench-soak-backfill")
    js = nc.jetstream()
    await ensure_streams(js, config)
    now = time.time()
    for k in range(360, 0, -1):
        await js.publish(config.subjects.metrics(HOST), encode(batch(metrics, now - 10 * k, -k)))
    await nc.close()


def api_get(base: str, token: str, path: str) -> Any:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


async def open_host_page(browser: Browser, base: str, token: str, fixed: bool) -> Page:
    """A signed-in tab on the Host page's "1 h" range (which follows the stream), or with
    ``fixed`` on a custom range over the same hour (which does not)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.add_init_script(LONGTASK_OBSERVER)
    await page.goto(base + "/")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#live.on", timeout=20_000)
    await page.evaluate(f"location.hash = {f'#/hosts/{HOST}'!r}")
    await page.locator("#charts figure").nth(15).wait_for(timeout=30_000)
    if fixed:
        # datetime-local fields take local time, to the minute: the last hour, rounded.
        await page.evaluate(
            """() => {
              const local = (ms) =>
                new Date(ms - new Date(ms).getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
              document.getElementById("from").value = local(Date.now() - 3600e3);
              document.getElementById("to").value = local(Date.now() + 60e3);
            }"""
        )
        await page.click("button:text-is('apply')")
    else:
        await page.click("button[data-range='1 h']")
    await page.wait_for_timeout(1000)
    await page.locator("#charts figure").nth(15).wait_for(timeout=30_000)
    return page


async def heap(page: Page, cdp: Any) -> float:
    """Used JS heap in MB after a full garbage collection."""
    await cdp.send("HeapProfiler.collectGarbage")
    usage = await cdp.send("Runtime.getHeapUsage")
    return float(usage["usedSize"]) / 1e6


async def long_tasks(page: Page, after_ms: float) -> tuple[int, float, int]:
    """(count after ``after_ms``, longest after it in ms, count before it)."""
    tasks: list[list[float]] = await page.evaluate("window.__longtasks")
    late = [d for start, d in tasks if start >= after_ms]
    return len(late), max(late, default=0.0), len(tasks) - len(late)


async def main(args: argparse.Namespace) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    metrics = chart_metrics()
    if len(metrics) != 16:
        raise SystemExit(f"expected 16 charts in host.js, found {len(metrics)}")
    with tempfile.TemporaryDirectory() as tmp, private_servers(Path(tmp)) as (nats, postgres):
        gateway: ServiceProcess | None = None
        stop = asyncio.Event()
        pub: asyncio.Task[None] | None = None
        try:
            db_url = postgres.create_database("signalfire")
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            gateway = start_gateway(
                nats.url,
                db_url,
                port,
                log_dir=Path(tmp),
                token_file=Path(tmp) / "admin-token",
                extra_env={"SF_LOG_LEVEL": "warning"},
            )
            token = (Path(tmp) / "admin-token").read_text().strip()
            await backfill(nats.url, metrics)
            deadline = time.monotonic() + 60
            while True:
                got = api_get(
                    base, token, f"/api/v1/query?host={HOST}&metric=cpu.usage_percent&from=-2h&step=10"
                )
                if sum(len(s["points"]) for s in got.get("series", [])) >= 355:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the backfill was not stored in time: {got}")
                await asyncio.sleep(0.5)
            counter = [0]
            pub = asyncio.create_task(publisher(nats.url, metrics, stop, counter))
            series = sum(len(series_of(m)) for m in metrics)
            print(f"one host, 16 charts, {series} series, a batch of {series} samples every second")

            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    soak = await open_host_page(browser, base, token, fixed=False)
                    ref = await open_host_page(browser, base, token, fixed=True)
                    pages = {"soak": soak, "reference": ref}
                    cdps = {name: await pg.context.new_cdp_session(pg) for name, pg in pages.items()}
                    # Long tasks are counted from here: page load and chart creation are before.
                    loaded_ms = {name: await pg.evaluate("performance.now()") for name, pg in pages.items()}
                    began = time.monotonic()
                    samples: dict[str, dict[int, float]] = {name: {} for name in pages}
                    for minute in range(args.minutes + 1):
                        await asyncio.sleep(max(0.0, began + 60 * minute - time.monotonic()))
                        for name, pg in pages.items():
                            samples[name][minute] = await heap(pg, cdps[name])
                        print(
                            f"minute {minute:3d}: heap soak {samples['soak'][minute]:.2f} MB,"
                            f" reference {samples['reference'][minute]:.2f} MB",
                            flush=True,
                        )
                    latest = await soak.locator("figure[aria-label='CPU total'] .latest").inner_text()
                    points = await soak.evaluate("document.querySelectorAll('#charts figure').length")
                    tasks = {name: await long_tasks(pg, loaded_ms[name]) for name, pg in pages.items()}
                finally:
                    await browser.close()
            stop.set()
            await pub
            pub = None

            first = 5 if args.minutes >= 10 else 1
            print()
            print(f"range 1 h (following the stream); {args.minutes} min; {counter[0] + 1} batches published")
            print(f"soak tab still live at the end: CPU total shows {latest!r} ({points} charts)")
            growth: dict[str, float] = {}
            for name in pages:
                h0, h1 = samples[name][first], samples[name][args.minutes]
                growth[name] = (h1 - h0) / h0 * 100
                count, longest, at_load = tasks[name]
                print(
                    f"{name:9s}: heap at minute {first} {h0:.2f} MB, at minute {args.minutes} {h1:.2f} MB,"
                    f" growth {growth[name]:+.1f} %; long tasks after load: {count}"
                    f" (longest {longest:.0f} ms), during load: {at_load}"
                )
            if args.minutes >= 10:
                # One sample moves by a few hundred KB with what is in flight: medians of three.
                for name in pages:
                    curve = samples[name]
                    h0 = statistics.median(curve[m] for m in (first - 1, first, first + 1))
                    h1 = statistics.median(curve[m] for m in range(args.minutes - 2, args.minutes + 1))
                    print(
                        f"{name:9s}: median heap minutes {first - 1}-{first + 1} {h0:.2f} MB,"
                        f" last three minutes {h1:.2f} MB, growth {(h1 - h0) / h0 * 100:+.1f} %"
                    )
            if args.minutes >= 15:
                h15, hend = samples["soak"][15], samples["soak"][args.minutes]
                print(f"soak heap growth minute 15 → {args.minutes}: {(hend - h15) / h15 * 100:+.1f} %")
            ratio = (samples["soak"][args.minutes] / samples["soak"][first]) / (
                samples["reference"][args.minutes] / samples["reference"][first]
            )
            print(f"ratio of heap growth factors soak / reference: {ratio:.3f}")
        finally:
            stop.set()
            if pub is not None:
                pub.cancel()
            if gateway is not None:
                gateway.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30, help="how long the tab stays open")
    asyncio.run(main(parser.parse_args()))
