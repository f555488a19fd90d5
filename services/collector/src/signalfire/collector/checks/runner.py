"""Runs every check in a task of its own, so a slow or hanging one delays nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from signalfire.collector import schedule
from signalfire.collector.checks.base import Check
from signalfire.events import Sample

log = logging.getLogger("signalfire.collector.checks")

#: Grace a check gets past its own timeout before the runner cancels it.
CANCEL_GRACE = 1.0


class CheckRunner:
    """Each check runs every ``interval`` seconds; :meth:`latest` returns the last completed
    result of each, so building a metric batch never waits for a check. A check that has
    not completed yet contributes nothing."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)
        self._latest: dict[int, list[Sample]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for n, check in enumerate(self.checks):
            self._tasks.append(asyncio.create_task(self._loop(n, check), name=f"check-{check.kind}-{n}"))

    async def stop(self) -> None:
        """Cancel the checks' tasks and close the checks."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for check in self.checks:
            await check.close()

    def latest(self) -> list[Sample]:
        return [sample for n in sorted(self._latest) for sample in self._latest[n]]

    async def run_once(self) -> list[Sample]:
        """Run every check once, concurrently (for ``--once``)."""
        results = await asyncio.gather(*(self._run(check) for check in self.checks))
        return [sample for samples in results for sample in samples]

    async def _loop(self, n: int, check: Check) -> None:
        planned = time.monotonic()
        while True:
            self._latest[n] = await self._run(check)
            planned = schedule.next_tick(planned, time.monotonic(), check.interval)
            await asyncio.sleep(max(0.0, planned - time.monotonic()))

    async def _run(self, check: Check) -> list[Sample]:
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for drops a cancellation that
        # arrives as the check completes (CPython gh-86296), and the runner then never stops.
        try:
            async with asyncio.timeout(check.timeout + CANCEL_GRACE):
                return await check.run()
        except TimeoutError:
            return check.failed("timeout")
        except Exception as exc:  # a bug in one check must not stop the others
            with contextlib.suppress(Exception):
                log.exception(
                    "check failed", extra={"check": check.kind, "target": check.target, "reason": str(exc)}
                )
            return check.failed("connection_failed")
