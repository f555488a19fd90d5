"""What a page's long tasks are made of: a Chrome trace of the renderer's main thread, summarized.

A ``longtask`` entry says only that the main thread was busy; the trace says with what. Each
task is named by the callbacks it ran (``FunctionCall`` with the function's name: the stream's
``onmessage``, an animation frame's ``flush``, a timer) and the browser's own work inside it
(style, layout, paint, garbage collection), in milliseconds of wall time.

    await longtasks.start(browser, page)
    ...
    trace = await longtasks.stop(browser)   # bytes: open in DevTools' Performance panel
    for line in longtasks.anatomy(trace): print(line)
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from playwright.async_api import Browser, Page

CATEGORIES = ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8"]
_TASK = frozenset({"ThreadControllerImpl::RunTask", "RunTask"})
# The browser's own work, by the trace's names for it.
_WORK = {
    "UpdateLayoutTree": "style",
    "Layout": "layout",
    "PrePaint": "prepaint",
    "Paint": "paint",
    "Layerize": "layerize",
    "Commit": "commit",
    "MajorGC": "major GC",
    "MinorGC": "minor GC",
    "ParseHTML": "parse HTML",
    "HitTest": "hit test",
}
_CALLBACKS = frozenset({"FunctionCall", "EvaluateScript", "v8.compile"})


async def start(browser: Browser, page: Page) -> None:
    """Start tracing ``page``'s renderer (one trace per browser at a time)."""
    await browser.start_tracing(page=page, categories=CATEGORIES)


async def stop(browser: Browser) -> bytes:
    """Stop tracing; the trace as DevTools saves it."""
    return await browser.stop_tracing()


def anatomy(trace: bytes, script: str, *, top: int = 6, over_ms: float = 50.0) -> list[str]:
    """Lines naming the ``top`` longest main-thread tasks of the page that ran a script whose
    URL contains ``script`` (other tabs of the browser are in the trace too): how long, the
    callbacks they ran and the browser's work inside them; and the busy time of the whole
    trace by kind of work."""
    document = json.loads(trace)
    events: list[dict[str, Any]] = document["traceEvents"] if isinstance(document, dict) else document
    renderers = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"
    }
    main = {
        (e["pid"], e["tid"])
        for e in events
        if (e.get("pid"), e.get("tid")) in renderers
        and e.get("name") == "FunctionCall"
        and script in e.get("args", {}).get("data", {}).get("url", "")
    }
    timed = sorted(
        (e for e in events if (e.get("pid"), e.get("tid")) in main and e.get("ph") == "X" and "dur" in e),
        key=lambda e: e["ts"],
    )
    tasks = [e for e in timed if e["name"] in _TASK]
    lines = []
    totals: Counter[str] = Counter()
    for e in timed:
        if e["name"] in _WORK:
            totals[_WORK[e["name"]]] += e["dur"]
        elif e["name"] == "FunctionCall":
            totals["script"] += e["dur"]
    seconds = (timed[-1]["ts"] - timed[0]["ts"]) / 1e6 if timed else 0.0
    over = sum(t["dur"] > over_ms * 1000 for t in tasks)
    lines.append(
        f"trace: {seconds:.0f} s, {len(tasks)} main-thread tasks, {over} over {over_ms:g} ms;"
        " busy by kind (ms): " + ", ".join(f"{kind} {us / 1000:.0f}" for kind, us in totals.most_common())
    )
    for task in sorted(tasks, key=lambda t: -t["dur"])[:top]:
        end = task["ts"] + task["dur"]
        inside = [e for e in timed if task["ts"] <= e["ts"] < end and e is not task]
        work: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        for e in inside:
            if e["name"] in _WORK:
                work[_WORK[e["name"]]] += e["dur"]
            elif e["name"] in _CALLBACKS:
                data = e.get("args", {}).get("data", {})
                source = data.get("url", "").rsplit("/", 1)[-1]
                calls[data.get("functionName") or source or e["name"]] += e["dur"]
        described = [f"{name or '(anonymous)'} {us / 1000:.1f}" for name, us in calls.most_common(4)]
        described += [f"{kind} {us / 1000:.1f}" for kind, us in work.most_common(4)]
        described = described or ["(nothing traced inside)"]
        lines.append(f"  task {task['dur'] / 1000:.0f} ms: " + ", ".join(described))
    return lines
