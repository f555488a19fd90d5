"""Ingest workers: ``ingest_workers`` child processes that ingest while the gateway serves.

With ``ingest_workers: N`` (``SF_INGEST_WORKERS``, ``signalfire gateway --workers N``) the
gateway process runs migrations, the API, maintenance and the silences mirror, and starts N
processes (:mod:`.worker`) that each run only the ingest, on the same durable consumers as
every other gateway (JetStream hands each message to one of them). The API's live stream and
latest values are then fed by the workers' committed frames (:mod:`.committed`).

:class:`IngestWorkers` supervises them: a worker that exits is started again after a back-off
(1 s, doubling up to ``max_backoff``, back to 1 s after a minute of uptime); at stop each gets
SIGTERM (it finishes its round in flight and merges its rollups) and, after
``STOP_TIMEOUT`` seconds, SIGKILL (what it held is redelivered to the others). Should the
gateway itself die, each worker sees its stdin close and stops on its own.

On the gateway's ``/metrics``: ``ingest_workers`` (configured), ``ingest_workers_running``,
``ingest_worker_restarts_total{worker}``, and every worker's own metrics (the ingest counters,
lags and write times) with a ``worker`` label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from signalfire.config import Duration
from signalfire.consumers import Backoff
from signalfire.gateway.config import GatewayConfig
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.gateway.workers")

#: Seconds a stopping worker may take to finish its round before it is killed.
STOP_TIMEOUT = 30.0


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    #: Whether this process has reported (its ingest started).
    ingesting: bool = False
    #: The worker's last metrics page, parsed.
    families: list[Metric] = field(default_factory=list)


def _seconds(value: object) -> float:
    """A :class:`~signalfire.config.Duration` as plain seconds (what the worker's config reads)."""
    if isinstance(value, Duration):
        return float(value)
    raise TypeError(f"cannot send a {type(value).__name__} to an ingest worker")


class IngestWorkers:
    """Starts, watches and stops ``count`` ingest worker processes."""

    def __init__(self, config: GatewayConfig, count: int, registry: Registry) -> None:
        self.config = config
        self.workers = [_Worker(i) for i in range(1, count + 1)]
        self.backoff = Backoff(first=1.0, cap=float(config.max_backoff), stable=60.0)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._config_line = msgspec.json.encode(config, enc_hook=_seconds) + b"\n"
        registry.gauge("ingest_workers", "Ingest worker processes configured").set(count)
        registry.gauge(
            "ingest_workers_running", "Ingest worker processes whose ingest runs", function=self.running
        )
        self.restarts = registry.counter(
            "ingest_worker_restarts", "Ingest worker processes started again after they exited", ["worker"]
        )
        registry.include(self.families)

    def running(self) -> int:
        """Workers alive whose ingest has started (they reported since they were started)."""
        return sum(
            1 for w in self.workers if w.ingesting and w.process is not None and w.process.returncode is None
        )

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker ingests, at most ``timeout`` seconds; whether they all do."""
        deadline = time.monotonic() + timeout
        while self.running() < len(self.workers):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [w.process.pid for w in self.workers if w.process is not None and w.process.returncode is None]

    async def start(self) -> None:
        """Start every worker (their ingest starts in the background: :meth:`wait_ready`)."""
        for worker in self.workers:
            await self._spawn(worker)
            task = asyncio.create_task(self._supervise(worker), name=f"ingest-worker-{worker.index}")
            self._tasks.append(task)
        log.info("ingest workers started", extra={"workers": len(self.workers), "pids": self.pids()})

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The loops supervising each worker, once started."""
        return list(self._tasks)

    async def stop(self) -> None:
        """SIGTERM every worker (by its pid), wait for them, SIGKILL those still running after
        ``STOP_TIMEOUT`` seconds."""
        self._stopping.set()
        processes = [w.process for w in self.workers if w.process is not None]
        processes = [p for p in processes if p.returncode is None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), timeout=STOP_TIMEOUT)
            except TimeoutError:
                log.warning("an ingest worker did not stop in time; killing it", extra={"pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def families(self) -> Iterable[Metric]:
        """The workers' last metrics pages, each sample labelled with its ``worker``."""
        merged: dict[str, Metric] = {}
        for worker in self.workers:
            label = str(worker.index)
            for family in worker.families:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type)
                into.samples.extend(s._replace(labels={**s.labels, "worker": label}) for s in family.samples)
        return merged.values()

    async def _spawn(self, worker: _Worker) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "signalfire.gateway.worker",
            "--index",
            str(worker.index),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # stderr: the gateway's own, so the workers' logs are with its logs
            # A session of its own: Ctrl-C in a terminal reaches the gateway alone, which then
            # stops its workers itself (rather than seeing them exit and restarting them).
            start_new_session=True,
        )
        assert process.stdin is not None
        # The configuration (passwords included) goes through the pipe, not the command line or
        # the environment; stdin then stays open, so the worker sees the gateway go away.
        process.stdin.write(self._config_line)
        await process.stdin.drain()
        worker.process = process
        worker.ingesting = False
        worker.started = time.monotonic()

    async def _supervise(self, worker: _Worker) -> None:
        delay: float | None = None
        while True:
            process = worker.process
            assert process is not None and process.stdout is not None
            await self._read_reports(worker, process.stdout)
            code = await process.wait()
            if self._stopping.is_set():
                return
            uptime = time.monotonic() - worker.started
            delay = self.backoff.delay(delay, uptime)
            log.warning(
                "an ingest worker exited; starting it again",
                extra={"worker": worker.index, "pid": process.pid, "code": code, "in": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return
            try:
                await self._spawn(worker)
            except OSError as exc:
                log.warning(
                    "cannot start an ingest worker", extra={"worker": worker.index, "reason": str(exc)}
                )
                continue
            worker.restarts += 1
            self.restarts.labels(worker=str(worker.index)).inc()
            if self._stopping.is_set() and worker.process is not None:  # stop() began meanwhile
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()

    @staticmethod
    async def _read_reports(worker: _Worker, stdout: asyncio.StreamReader) -> None:
        """Keep the worker's latest metrics page until its stdout closes."""
        while True:
            try:
                head = await stdout.readline()
                if not head:
                    return
                page = await stdout.readexactly(int(head))
                worker.families = list(text_string_to_metric_families(page.decode()))
                worker.ingesting = True
            except (ValueError, asyncio.IncompleteReadError) as exc:
                log.warning(
                    "unreadable report from an ingest worker; its metrics are not shown",
                    extra={"worker": worker.index, "reason": str(exc)},
                )
                # Drained all the same: a full pipe would stop the worker at its next report.
                while await stdout.read(1 << 16):
                    pass
                return
