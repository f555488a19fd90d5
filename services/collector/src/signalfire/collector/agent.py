"""The agent: collect on every tick, publish each batch to JetStream, buffer while NATS is away.

Two tasks share an :class:`~signalfire.collector.outbox.Outbox`. The collecting task runs the
collectors on schedule and queues one ``MetricBatch`` per tick, whatever the bus is doing;
the publishing task empties the outbox oldest first, pipelining up to ``PUBLISH_WINDOW``
publishes before waiting for their acknowledgements; when one fails, it and the ones after
it go back to the front and wait for the next tick (or a reconnect). So batches made while
NATS or the stream is away reach the stream later, in order, with their original times.
Checks run in tasks of their own (:class:`~signalfire.collector.checks.CheckRunner`); a
batch carries each check's latest completed result and never waits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import nats.errors
import psutil
from nats.aio.client import Client as NATS

from signalfire.bus import connect
from signalfire.collector import schedule
from signalfire.collector.checks import CheckRunner, build_checks
from signalfire.collector.collectors import Collector, MetricSpec, build_collectors
from signalfire.collector.config import AgentConfig
from signalfire.collector.facts import host_facts
from signalfire.collector.outbox import Outbox, Outgoing
from signalfire.events import MAX_SAMPLE_VALUE, AgentStatus, HostFacts, MetricBatch, Sample, encode
from signalfire.runner import Essentials

log = logging.getLogger("signalfire.collector")

#: How long a window of publishes waits for JetStream's acknowledgements.
PUBLISH_TIMEOUT = 2.0
#: Publishes sent before waiting for their acknowledgements (replaying a backlog).
PUBLISH_WINDOW = 64
#: How long ``stop()`` spends on publishing what is buffered, then ``offline``, then draining.
STOP_FLUSH_TIMEOUT = 5.0
STOP_STATUS_TIMEOUT = 1.0
STOP_DRAIN_TIMEOUT = 2.0
#: Pause before connecting again when a connection attempt failed outright (bad TLS files...).
RECONNECT_PAUSE = 5.0

#: The agent's own health, sent in every batch next to the host's metrics.
AGENT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("agent.batches_sent", (), "batches", "Batches JetStream acknowledged since the agent started"),
    MetricSpec("agent.batches_buffered", (), "batches", "Batches waiting in the buffer to be published"),
    MetricSpec("agent.batches_dropped", (), "batches", "Batches dropped because the buffer was full"),
    MetricSpec("agent.publish_errors", (), "errors", "Publish attempts that failed (timeout, no stream)"),
    MetricSpec("agent.collect_seconds", (), "seconds", "Time the collectors took for this batch"),
    MetricSpec("agent.collector_errors", ("collector",), "errors", "Collections that failed, per collector"),
    MetricSpec(
        "agent.invalid_values",
        ("collector",),
        "samples",
        "Samples left out because their value was NaN, infinite or past 1e300 in magnitude, per collector "
        "(sent once a collector made one)",
    ),
    MetricSpec(
        "agent.collector_seconds", ("collector",), "seconds", "Time one collector took for this batch"
    ),
    MetricSpec(
        "agent.cpu_percent", (), "percent", "CPU the agent used since the last batch (100 = one core)"
    ),
    MetricSpec("agent.rss_bytes", (), "bytes", "Resident memory of the agent"),
)

_PUBLISH_ERRORS = (nats.errors.Error, TimeoutError, OSError)
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Agent:
    """The host agent. ``start()`` returns at once, also when NATS is unreachable (batches
    are buffered until it answers); ``stop()`` publishes what it can, says ``offline`` and
    closes the connection it opened.

    ``nc`` may be a connected client owned by the caller (it is then left open); without
    it the agent connects with ``config.nats`` and reconnects forever.
    """

    def __init__(
        self, config: AgentConfig, nc: NATS | None = None, *, collectors: Sequence[Collector] | None = None
    ) -> None:
        self.config = config
        self.host = config.host
        self.interval = float(config.interval)
        self.subjects = config.nats.subjects
        self.collectors = list(collectors) if collectors is not None else build_collectors(config)
        self.outbox = Outbox(config.buffer_size, Path(config.spool_dir) if config.spool_dir else None)
        self.checks = CheckRunner(build_checks(config.checks, self.interval))
        # The agent's own counters travel in its batches (``own_samples``), not on a /metrics page.
        self._sent = 0
        self._publish_errors = 0
        self._collector_errors: dict[str, int] = {}
        self._invalid_values: dict[str, int] = {}
        self._collect_seconds = 0.0
        self._nc = nc
        self._owns_nc = nc is None
        self._run_id = secrets.token_hex(6)
        #: Batches collected since the agent started (sent + dropped + buffered).
        self.batches_made = 0
        self._facts: HostFacts | None = None
        self._online_pending = True
        self._failing = False
        self._failing_collectors: set[str] = set()
        self._collector_seconds: dict[str, float] = {}
        times = os.times()
        self._cpu_reading = (time.monotonic(), times.user + times.system)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: The loops it cannot run without; one that ends stops the process (signalfire.runner).
        self.essentials = Essentials()
        self._connected = asyncio.Event()

    # Lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start collecting and publishing in the background."""
        self._facts = await asyncio.to_thread(host_facts)
        if self._nc is not None:
            self._connected.set()
        else:
            self._tasks.append(asyncio.create_task(self._connect(), name="agent-connect"))
        self.checks.start()
        self._tasks.append(self.essentials.spawn(self._collect_loop(), "agent-collect"))
        self._tasks.append(self.essentials.spawn(self._publish_loop(), "agent-publish"))
        log.info(
            "agent started",
            extra={"host": self.host, "subject": self.subjects.metrics(self.host), "interval": self.interval},
        )

    async def stop(self) -> None:
        """Stop collecting; publish the buffer and ``offline`` (best effort, bounded in time);
        drain and close the connection if the agent opened it."""
        self.essentials.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.checks.stop()
        nc = self._nc
        if nc is not None and nc.is_connected:
            js = nc.jetstream()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush(js, nc), STOP_FLUSH_TIMEOUT)
            await self._publish(
                js,
                self.subjects.agents(self.host),
                encode(self._status("offline")),
                f"{self._run_id}-offline",
                STOP_STATUS_TIMEOUT,
            )
        if len(self.outbox):
            log.warning("stopped with unpublished batches", extra={"batches": len(self.outbox)})
        if nc is not None and self._owns_nc:
            try:
                await asyncio.wait_for(nc.drain(), STOP_DRAIN_TIMEOUT)
            except (TimeoutError, *_PUBLISH_ERRORS):
                await nc.close()
            self._nc = None
        log.info("agent stopped", extra={"host": self.host, "batches_sent": self._sent})

    # Collecting --------------------------------------------------------------------------
    async def collect_batch(self, *, run_checks: bool = False) -> MetricBatch:
        """Run every collector once (in a worker thread) and return the batch, with each
        check's latest result (or, with ``run_checks``, a fresh one) and the agent's own
        counters appended; the batch time is the wall clock at the start."""
        wall = time.time()
        started = time.perf_counter()
        samples = await asyncio.to_thread(self._collect_all, time.monotonic())
        self._collect_seconds = time.perf_counter() - started
        samples.extend(await self.checks.run_once() if run_checks else self.checks.latest())
        samples.extend(self.own_samples())
        return MetricBatch(host=self.host, time=wall, samples=samples, labels=dict(self.config.labels))

    def _collect_all(self, now: float) -> list[Sample]:
        samples: list[Sample] = []
        for collector in self.collectors:
            started = time.perf_counter()
            try:
                collected = collector.collect(now)
            except Exception as exc:
                self._collector_errors[collector.name] = self._collector_errors.get(collector.name, 0) + 1
                if collector.name not in self._failing_collectors:
                    self._failing_collectors.add(collector.name)
                    log.exception("collector failed", extra={"collector": collector.name, "reason": str(exc)})
                continue
            self._collector_seconds[collector.name] = time.perf_counter() - started
            self._failing_collectors.discard(collector.name)
            # One value out of the contract's range (NaN, infinite, past 1e300) would make
            # consumers reject the whole batch: such samples are left out, counted, and the
            # first of each collector logged.
            kept = [s for s in collected if -MAX_SAMPLE_VALUE <= s.value <= MAX_SAMPLE_VALUE]
            if len(kept) < len(collected):
                seen = self._invalid_values.get(collector.name, 0)
                self._invalid_values[collector.name] = seen + len(collected) - len(kept)
                if not seen:
                    bad = next(s for s in collected if not -MAX_SAMPLE_VALUE <= s.value <= MAX_SAMPLE_VALUE)
                    log.warning(
                        "a collector made a value outside what a batch may carry (NaN, infinite or "
                        "past 1e300); such samples are left out and counted in agent.invalid_values",
                        extra={"collector": collector.name, "metric": bad.name, "value": repr(bad.value)},
                    )
            samples.extend(kept)
        return samples

    def own_samples(self) -> list[Sample]:
        """The agent's own counters (``AGENT_METRICS``) as samples."""
        samples = [
            Sample("agent.batches_sent", float(self._sent)),
            Sample("agent.batches_buffered", float(self._buffered())),
            Sample("agent.batches_dropped", float(self._dropped())),
            Sample("agent.publish_errors", float(self._publish_errors)),
            Sample("agent.collect_seconds", round(self._collect_seconds, 6)),
        ]
        for collector in self.collectors:
            labels = {"collector": collector.name}
            errors = float(self._collector_errors.get(collector.name, 0))
            samples.append(Sample("agent.collector_errors", errors, labels))
            if invalid := self._invalid_values.get(collector.name):
                samples.append(Sample("agent.invalid_values", float(invalid), labels))
            if (seconds := self._collector_seconds.get(collector.name)) is not None:
                samples.append(Sample("agent.collector_seconds", round(seconds, 6), labels))
        samples.extend(self._own_usage())
        return samples

    def _own_usage(self) -> list[Sample]:
        times = os.times()
        cpu = times.user + times.system
        try:
            with open("/proc/self/statm", "rb") as f:
                rss = int(f.read().split()[1]) * _PAGE_SIZE
        except OSError:  # not Linux
            try:
                rss = psutil.Process().memory_info().rss
            except psutil.Error:
                return []
        now = time.monotonic()
        then, cpu_then = self._cpu_reading
        self._cpu_reading = (now, cpu)
        samples = [Sample("agent.rss_bytes", float(rss))]
        if now > then:
            samples.append(Sample("agent.cpu_percent", round(100.0 * (cpu - cpu_then) / (now - then), 3)))
        return samples

    def _buffered(self) -> float:
        return float(len(self.outbox))

    def _dropped(self) -> float:
        return float(self.outbox.dropped)

    async def _collect_loop(self) -> None:
        planned = time.monotonic() + schedule.delay_until_aligned(time.time(), self.interval)
        while True:
            delay = planned - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            batch = await self.collect_batch()
            self.batches_made += 1
            msg_id = f"{self._run_id}-{self.batches_made}"
            self.outbox.put(Outgoing(self.subjects.metrics(self.host), encode(batch), msg_id))
            self._wake.set()
            planned = schedule.next_tick(planned, time.monotonic(), self.interval)

    # Publishing --------------------------------------------------------------------------
    async def _connect(self) -> None:
        while self._nc is None:
            try:
                self._nc = await connect(
                    self.config.nats, f"signalfire-agent {self.host}", on_reconnect=self._on_reconnect
                )
            except Exception as exc:
                log.error("cannot connect to NATS", extra={"url": self.config.nats.url, "reason": str(exc)})
                await asyncio.sleep(RECONNECT_PAUSE)
        self._connected.set()
        self._wake.set()

    async def _on_reconnect(self) -> None:
        self._wake.set()

    async def _publish_loop(self) -> None:
        await self._connected.wait()
        nc = self._nc
        assert nc is not None
        js = nc.jetstream()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush(js, nc)

    async def _flush(self, js: Any, nc: NATS) -> None:
        """Publish ``online`` if not yet done, then the outbox oldest first; stop at the
        first failure (the next tick or reconnect tries again)."""
        if not nc.is_connected:
            self._mark_failing(self.subjects.metrics(self.host), "not connected to NATS")
            return
        if self._online_pending:
            status = encode(self._status("online"))
            if not await self._publish(js, self.subjects.agents(self.host), status, f"{self._run_id}-online"):
                return
            self._online_pending = False
        replayed = 0
        while window := self.outbox.take(PUBLISH_WINDOW):
            try:
                acknowledged = await self._publish_window(js, nc, window)
            except asyncio.CancelledError:
                self.outbox.put_back(window)
                raise
            for item in window[:acknowledged]:
                self.outbox.done(item)
            replayed += acknowledged
            if acknowledged < len(window):
                # In order: the first failure and everything after it go again. Those of them
                # the stream did store are recognised by their Nats-Msg-Id and not stored twice.
                self.outbox.put_back(window[acknowledged:])
                return
        if self._failing:
            self._failing = False
            subject = self.subjects.metrics(self.host)
            log.info("publishing again", extra={"subject": subject, "batches": replayed})

    async def _publish_window(self, js: Any, nc: NATS, window: list[Outgoing]) -> int:
        """Publish ``window`` without waiting between messages, then wait for the
        acknowledgements; returns how many leading messages were acknowledged (or dropped
        as too large for the server, which no retry can fix)."""
        futures: list[asyncio.Future[Any] | None] = []
        for item in window:
            try:
                future = await js.publish_async(item.subject, item.data, headers={"Nats-Msg-Id": item.msg_id})
            except nats.errors.MaxPayloadError:
                futures.append(None)
                continue
            except _PUBLISH_ERRORS as exc:
                self._publish_errors += 1
                self._mark_failing(item.subject, str(exc) or type(exc).__name__)
                break
            futures.append(future)
        pending = [f for f in futures if f is not None]
        if pending:
            await asyncio.wait(pending, timeout=PUBLISH_TIMEOUT)
        acknowledged = 0
        for item, future in zip(window, futures, strict=False):
            if future is None:
                self.outbox.discard(item)
                log.error(
                    "batch larger than the server's max_payload, dropped",
                    extra={"subject": item.subject, "bytes": len(item.data), "max_payload": nc.max_payload},
                )
            elif not future.done() or future.cancelled() or future.exception() is not None:
                error = (
                    "no acknowledgement" if not future.done() or future.cancelled() else future.exception()
                )
                self._publish_errors += 1
                self._mark_failing(item.subject, str(error) or type(error).__name__)
                break
            else:
                self._sent += 1
            acknowledged += 1
        for future in pending:
            if not future.done():
                future.cancel()  # frees nats-py's slot for it
        return acknowledged

    async def _publish(
        self, js: Any, subject: str, data: bytes, msg_id: str, timeout: float = PUBLISH_TIMEOUT
    ) -> bool:
        try:
            await js.publish(subject, data, timeout=timeout, headers={"Nats-Msg-Id": msg_id})
        except _PUBLISH_ERRORS as exc:
            self._publish_errors += 1
            self._mark_failing(subject, str(exc) or type(exc).__name__)
            return False
        return True

    def _mark_failing(self, subject: str, reason: str) -> None:
        # One line when publishing starts failing and one when it works again, not one per tick.
        if not self._failing:
            self._failing = True
            log.warning("cannot publish, buffering batches", extra={"subject": subject, "reason": reason})

    def _status(self, status: Literal["online", "offline"]) -> AgentStatus:
        return AgentStatus(
            host=self.host,
            status=status,
            time=time.time(),
            facts=self._facts or HostFacts(),
            labels=dict(self.config.labels),
            interval=self.interval,
        )
