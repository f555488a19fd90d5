"""The agent: collect on every tick, publish each batch to JetStream, buffer while NATS is away.

Two tasks share an :class:`~signalfire.collector.outbox.Outbox`. The collecting task runs the
collectors on schedule and queues one ``MetricBatch`` per tick, whatever the bus is doing;
the publishing task empties the outbox oldest first and, when a publish fails, puts the
batch back and waits for the next tick (or a reconnect) to try again. So batches made while
NATS or the stream is away reach the stream later, in order, with their original times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any, Literal

import nats.errors
from nats.aio.client import Client as NATS

from signalfire.bus import connect
from signalfire.collector import schedule
from signalfire.collector.collectors import Collector, MetricSpec, build_collectors
from signalfire.collector.config import AgentConfig
from signalfire.collector.facts import host_facts
from signalfire.collector.outbox import Outbox, Outgoing
from signalfire.events import AgentStatus, HostFacts, MetricBatch, Sample, encode
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.collector")

#: How long one publish waits for JetStream's acknowledgement.
PUBLISH_TIMEOUT = 2.0
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
)

_PUBLISH_ERRORS = (nats.errors.Error, TimeoutError, OSError)


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
        self.outbox = Outbox(config.buffer_size)
        self.registry = Registry("signalfire_agent")
        self._sent = self.registry.counter("batches_sent_total", "Batches JetStream acknowledged")
        self._publish_errors = self.registry.counter("publish_errors_total", "Publish attempts that failed")
        self._collector_errors = self.registry.counter(
            "collector_errors_total", "Collections that failed", ["collector"]
        )
        self._collect_seconds = self.registry.gauge("collect_seconds", "Time the last collection took")
        self.registry.gauge("batches_buffered", "Batches waiting to be published", function=self._buffered)
        self.registry.gauge("batches_dropped", "Batches dropped, buffer full", function=self._dropped)
        self._nc = nc
        self._owns_nc = nc is None
        self._run_id = secrets.token_hex(6)
        #: Batches collected since the agent started (sent + dropped + buffered).
        self.batches_made = 0
        self._facts: HostFacts | None = None
        self._online_pending = True
        self._failing = False
        self._failing_collectors: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()

    # Lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start collecting and publishing in the background."""
        self._facts = await asyncio.to_thread(host_facts)
        if self._nc is not None:
            self._connected.set()
        else:
            self._tasks.append(asyncio.create_task(self._connect(), name="agent-connect"))
        self._tasks.append(asyncio.create_task(self._collect_loop(), name="agent-collect"))
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="agent-publish"))
        log.info(
            "agent started",
            extra={"host": self.host, "subject": self.subjects.metrics(self.host), "interval": self.interval},
        )

    async def stop(self) -> None:
        """Stop collecting; publish the buffer and ``offline`` (best effort, bounded in time);
        drain and close the connection if the agent opened it."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
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
        log.info("agent stopped", extra={"host": self.host, "batches_sent": int(self._sent.value())})

    # Collecting --------------------------------------------------------------------------
    async def collect_batch(self) -> MetricBatch:
        """Run every collector once (in a worker thread) and return the batch, with the
        agent's own counters appended; the batch time is the wall clock at the start."""
        wall = time.time()
        started = time.perf_counter()
        samples = await asyncio.to_thread(self._collect_all, time.monotonic())
        self._collect_seconds.set(time.perf_counter() - started)
        samples.extend(self.own_samples())
        return MetricBatch(host=self.host, time=wall, samples=samples, labels=dict(self.config.labels))

    def _collect_all(self, now: float) -> list[Sample]:
        samples: list[Sample] = []
        for collector in self.collectors:
            try:
                collected = collector.collect(now)
            except Exception as exc:
                self._collector_errors.inc(collector=collector.name)
                if collector.name not in self._failing_collectors:
                    self._failing_collectors.add(collector.name)
                    log.exception("collector failed", extra={"collector": collector.name, "reason": str(exc)})
                continue
            self._failing_collectors.discard(collector.name)
            # One non-finite value would make consumers reject the whole batch.
            samples.extend(s for s in collected if math.isfinite(s.value))
        return samples

    def own_samples(self) -> list[Sample]:
        """The agent's own counters (``AGENT_METRICS``) as samples."""
        samples = [
            Sample("agent.batches_sent", self._sent.value()),
            Sample("agent.batches_buffered", float(self._buffered())),
            Sample("agent.batches_dropped", float(self._dropped())),
            Sample("agent.publish_errors", self._publish_errors.value()),
            Sample("agent.collect_seconds", round(self._collect_seconds.value(), 6)),
        ]
        for collector in self.collectors:
            errors = self._collector_errors.value(collector=collector.name)
            samples.append(Sample("agent.collector_errors", errors, {"collector": collector.name}))
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
        while (item := self.outbox.take()) is not None:
            try:
                published = await self._publish(js, item.subject, item.data, item.msg_id)
            except asyncio.CancelledError:
                self.outbox.put_back(item)
                raise
            except nats.errors.MaxPayloadError:
                # Retrying cannot help, and the batch must not hold up the ones behind it.
                self.outbox.discard(item)
                log.error(
                    "batch larger than the server's max_payload, dropped",
                    extra={"subject": item.subject, "bytes": len(item.data), "max_payload": nc.max_payload},
                )
                continue
            if not published:
                self.outbox.put_back(item)
                return
            self._sent.inc()
            replayed += 1
        if self._failing:
            self._failing = False
            subject = self.subjects.metrics(self.host)
            log.info("publishing again", extra={"subject": subject, "batches": replayed})

    async def _publish(
        self, js: Any, subject: str, data: bytes, msg_id: str, timeout: float = PUBLISH_TIMEOUT
    ) -> bool:
        try:
            await js.publish(subject, data, timeout=timeout, headers={"Nats-Msg-Id": msg_id})
        except nats.errors.MaxPayloadError:
            raise
        except _PUBLISH_ERRORS as exc:
            self._publish_errors.inc()
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
