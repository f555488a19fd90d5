"""The imperative shell around :mod:`signalfire.evaluator.state`.

Metric batches arrive on a core NATS subscription (lowest latency; the evaluator needs the
present, not the stream's history). Each sample that a rule watches advances that series'
state machine; transitions become :class:`~signalfire.events.AlertEvent` publishes on
JetStream, de-duplicated by ``Nats-Msg-Id: <alert_id>:<status>``.

Delivery is an outbox: a state with unpublished events is written to the ``alert_state`` KV
bucket *before* the events are published, and again once they are. After a crash, a
restarted evaluator re-publishes what the outbox still holds (the stream drops it if it had
gone out), so a restart neither repeats a firing nor loses a resolve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.config import Duration
from signalfire.evaluator.rules import Rule, load_rules
from signalfire.evaluator.state import AlertState, Series, Transition, fingerprint, step, tick
from signalfire.events import AlertEvent, MetricBatch, PayloadError, decode, encode
from signalfire.telemetry import Registry, parse_listen, serve_metrics

log = logging.getLogger("signalfire.evaluator")

#: Longest wait between two attempts of a failed publish or KV write.
MAX_BACKOFF = 5.0


class EvaluatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``signalfire evaluator --config FILE``; every field also from ``SF_*`` variables."""

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    log_level: str = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"
    #: Rule files, directories (their ``*.yaml``) or globs, relative to the working directory.
    rules: list[str] = msgspec.field(default_factory=lambda: ["rules/default.yaml"])
    #: ``host:port`` to serve ``/metrics`` on; off when unset.
    metrics_listen: str | None = None
    #: How often pending alerts are checked for ``for`` expiry between samples.
    tick_interval: Duration = Duration(1)

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval: must be greater than zero")
        if not self.rules:
            raise ValueError("rules: name at least one rule file, directory or glob")
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ValueError as exc:
                raise ValueError(f"metrics_listen: {exc}") from None


class StoredAlert(msgspec.Struct, kw_only=True):
    """A KV entry: the state and the events decided but not yet confirmed by the stream."""

    state: AlertState
    outbox: list[AlertEvent] = []
    v: int = 1


class EvaluatorService:
    """Evaluates rules on arriving metric batches and publishes alert events.

    ``nc`` may be a connected client to share (it is then not closed on :meth:`stop`);
    ``clock`` is the one time source of the service (unix seconds).
    """

    def __init__(
        self,
        config: EvaluatorConfig,
        nc: NATS | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.subjects = config.nats.subjects
        self._nc = nc
        self._own_nc = nc is None
        self._clock = clock
        self.rules: list[Rule] = []
        self._by_metric: dict[str, list[Rule]] = {}
        self._by_name: dict[str, Rule] = {}
        self._states: dict[str, AlertState] = {}
        self._pending: set[str] = set()
        self._outbox: dict[str, list[AlertEvent]] = {}
        self._dirty: dict[str, None] = {}  # fingerprints to write to KV, in order
        self._arrivals: dict[str, float] = {}  # Nats-Msg-Id → monotonic batch arrival
        self._fingerprints: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._metrics_server: asyncio.Server | None = None

        self.registry = Registry("signalfire_evaluator")
        r = self.registry
        self.batches = r.counter("batches_total", "Metric batches evaluated")
        self.invalid_batches = r.counter(
            "invalid_batches_total", "Metric batches dropped because they do not match the contract"
        )
        self.samples = r.counter("samples_evaluated_total", "Samples that matched a rule and were evaluated")
        self.alert_events = r.counter("alert_events_total", "Alert events published", ["status"])
        self.duplicates = r.counter(
            "alert_duplicates_total", "Alert events the stream dropped as already published"
        )
        self.publish_failures = r.counter(
            "publish_failures_total", "Failed attempts to publish an alert event (each is retried)"
        )
        self.kv_failures = r.counter(
            "kv_failures_total", "Failed attempts to read or write alert state in the KV bucket"
        )
        self.invalid_states = r.counter(
            "invalid_states_total", "Alert states in the KV bucket that could not be read and were skipped"
        )
        self.template_errors = r.counter(
            "template_errors_total", "Annotations that failed to render (the raw template was sent)", ["rule"]
        )
        self.latency = r.gauge(
            "alert_publish_latency_seconds", "Batch arrival to alert publish of the last alert event"
        )
        self.latency_sum = r.counter(
            "alert_publish_latency_seconds_sum", "Total batch-arrival-to-publish time of alert events"
        )
        self.latency_count = r.counter(
            "alert_publish_latency_seconds_count", "Alert events counted in the latency sum"
        )
        r.gauge("rules", "Rules loaded", function=lambda: len(self.rules))
        r.gauge("alerts_firing", "Alerts currently firing", function=lambda: self._count("firing"))
        r.gauge(
            "alerts_pending",
            "Alerts pending (condition holds, `for` not yet elapsed)",
            function=lambda: len(self._pending),
        )

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the rules and stored alert states, then subscribe. Raises ``ConfigError`` for
        invalid rules and ``OSError``-like errors when NATS is unreachable."""
        self.set_rules(load_rules(self.config.rules))
        if self._nc is None:
            self._nc = await connect(self.config.nats, "signalfire-evaluator")
        nc = self._nc
        self._js = nc.jetstream()
        await ensure_streams(self._js, self.config.nats)
        self._kv = await self._js.key_value(self.subjects.bucket("alert_state"))
        await self._load_states()
        self._tasks = [
            asyncio.create_task(self._deliver(), name="evaluator-deliver"),
            asyncio.create_task(self._tick_loop(), name="evaluator-tick"),
        ]
        self._subs = [
            await nc.subscribe(self.subjects.all_metrics, cb=self._on_metrics),
            await nc.subscribe(self.subjects.control("evaluator", "rules"), cb=self._on_rules_request),
        ]
        # nats-py writes a flush's PING straight to the socket while SUBs wait in its send
        # buffer, so one flush can return before the server has the subscriptions. The
        # second PING goes out after them: once it returns, no batch published now is missed.
        await nc.flush()
        await nc.flush()
        if self.config.metrics_listen:
            host, port = parse_listen(self.config.metrics_listen)
            self._metrics_server = await serve_metrics(self.registry, host, port)
        log.info(
            "evaluator started",
            extra={
                "rules": len(self.rules),
                "alerts_firing": self._count("firing"),
                "alerts_pending": len(self._pending),
            },
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe, publish what is decided (up to ``timeout`` seconds), then close."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        self._stopping = True
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            deliver, ticker = tasks
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            try:
                await asyncio.wait_for(deliver, timeout)
            except TimeoutError:
                log.warning(
                    "stopped with alert events unpublished; they are kept for the next start",
                    extra={"alerts": len(self._dirty)},
                )
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        if self._own_nc and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    def set_rules(self, rules: list[Rule]) -> None:
        """Run ``rules`` from now on (states of rules that remain continue)."""
        self.rules = list(rules)
        self._by_name = {rule.name: rule for rule in rules}
        self._by_metric = {}
        for rule in rules:
            self._by_metric.setdefault(rule.metric, []).append(rule)

    async def _load_states(self) -> None:
        assert self._kv is not None
        watcher = await self._kv.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the end of what the bucket holds now
                    break
                try:
                    stored = msgspec.json.decode(entry.value or b"", type=StoredAlert)
                except msgspec.DecodeError as exc:
                    self.invalid_states.inc()
                    log.warning(
                        "skipped unreadable alert state", extra={"key": entry.key, "reason": str(exc)}
                    )
                    continue
                fp = stored.state.fingerprint
                self._states[fp] = stored.state
                if stored.state.status == "pending":
                    self._pending.add(fp)
                if stored.outbox:
                    self._outbox[fp] = list(stored.outbox)
                    self._dirty[fp] = None
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        if self._dirty:
            self._wake.set()

    # Evaluation --------------------------------------------------------------------------

    async def _on_metrics(self, msg: Msg) -> None:
        arrived = time.monotonic()
        now = self._clock()
        try:
            batch = decode(msg.data, MetricBatch)
        except PayloadError as exc:
            self.invalid_batches.inc()
            log.warning("dropped invalid metric batch", extra={"subject": msg.subject, "reason": str(exc)})
            return
        self.batches.inc()
        self.evaluate(batch, now, arrived)

    def evaluate(self, batch: MetricBatch, now: float, arrived: float | None = None) -> None:
        """Run every rule that watches a sample of ``batch`` at time ``now``."""
        for sample in batch.samples:
            rules = self._by_metric.get(sample.name)
            if not rules:
                continue
            labels = {**batch.labels, **sample.labels, "host": batch.host}
            for rule in rules:
                if not rule.matches(labels):
                    continue
                self.samples.inc()
                series = Series(host=batch.host, labels=sample.labels, context=batch.labels)
                fp = self._fingerprint(rule.name, batch.host, sample.labels)
                old = self._states.get(fp)
                new, transitions = step(rule, old, sample.value, now, series)
                self._apply(rule, old, new, transitions, arrived)

    def _fingerprint(self, rule: str, host: str, labels: dict[str, str]) -> str:
        key = (rule, host, tuple(sorted(labels.items())))
        fp = self._fingerprints.get(key)
        if fp is None:
            if len(self._fingerprints) > 1_000_000:  # bound the cache under label churn
                self._fingerprints.clear()
            fp = self._fingerprints[key] = fingerprint(rule, host, labels)
        return fp

    def _apply(
        self,
        rule: Rule,
        old: AlertState | None,
        new: AlertState,
        transitions: list[Transition],
        arrived: float | None,
    ) -> None:
        fp = new.fingerprint
        if new.status == "pending":
            self._pending.add(fp)
        else:
            self._pending.discard(fp)
        if new.status == "inactive" and new.seq == 0:
            # Never announced: nothing to remember (only forget what was stored).
            if old is not None:
                del self._states[fp]
                self._mark_dirty(fp)
            return
        self._states[fp] = new
        for transition in transitions:
            event = self._event(rule, new, transition)
            self._outbox.setdefault(fp, []).append(event)
            if arrived is not None:
                self._arrivals[_msg_id(event)] = arrived
        if transitions or old is None or old.status != new.status:
            self._mark_dirty(fp)

    def _event(self, rule: Rule, state: AlertState, transition: Transition) -> AlertEvent:
        labels = {**state.context, **state.labels, **rule.labels}
        context: dict[str, Any] = {
            "value": transition.value,
            "threshold": rule.condition.threshold,
            "host": state.host,
            "labels": labels,
            "rule": rule.name,
        }
        annotations, failed = rule.render_annotations(context)
        for key in failed:
            self.template_errors.inc(rule=rule.name)
            log.warning(
                "annotation template failed; sent the raw template",
                extra={"rule": rule.name, "annotation": key},
            )
        return AlertEvent(
            id=transition.alert_id,
            fingerprint=transition.fingerprint,
            rule=rule.name,
            status=transition.status,
            severity=rule.severity,
            host=state.host,
            starts_at=transition.starts_at,
            time=transition.time,
            labels=labels,
            annotations=annotations,
            value=transition.value,
            threshold=rule.condition.threshold,
            ends_at=transition.ends_at,
            seq=transition.seq,
        )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.config.tick_interval))
            self.tick(self._clock())

    def tick(self, now: float) -> None:
        """Fire pending alerts whose ``for`` has elapsed by ``now``."""
        for fp in list(self._pending):
            state = self._states.get(fp)
            rule = self._by_name.get(state.rule) if state is not None else None
            if state is None or rule is None:
                self._pending.discard(fp)
                continue
            new, transitions = tick(rule, state, now)
            if transitions:
                self._apply(rule, state, new, transitions, None)

    def _count(self, status: str) -> int:
        return sum(1 for state in self._states.values() if state.status == status)

    # Delivery ----------------------------------------------------------------------------

    def _mark_dirty(self, fp: str) -> None:
        self._dirty[fp] = None
        self._wake.set()

    async def _deliver(self) -> None:
        """The one writer: persists states and publishes their events, in decision order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                fp = next(iter(self._dirty))
                del self._dirty[fp]
                if not await self._flush(fp):
                    self._dirty[fp] = None  # keep it for the next start
                    return
            if self._stopping:
                return

    async def _flush(self, fp: str) -> bool:
        """Persist ``fp``'s state and publish its outbox. ``False`` when stopping cut it short."""
        assert self._kv is not None
        kv = self._kv
        if fp not in self._states:
            return await self._retry("kv", lambda: kv.delete(fp))
        outbox = self._outbox.get(fp)
        if outbox:
            # The intent first: a crash from here on re-publishes, and the stream de-duplicates.
            if not await self._retry("kv", lambda: self._put(fp)):
                return False
            while outbox:
                if not await self._publish(outbox[0]):
                    return False
                outbox.pop(0)
            self._outbox.pop(fp, None)
        return await self._retry("kv", lambda: self._put(fp))

    async def _put(self, fp: str) -> None:
        assert self._kv is not None
        state = self._states.get(fp)
        if state is None:
            return
        record = StoredAlert(state=state, outbox=list(self._outbox.get(fp, [])))
        await self._kv.put(fp, msgspec.json.encode(record))

    async def _publish(self, event: AlertEvent) -> bool:
        assert self._js is not None
        js = self._js
        msg_id = _msg_id(event)
        subject = self.subjects.alerts(event.host)
        payload = encode(event)
        acks: list[Any] = []

        async def send() -> None:
            acks.append(await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}))

        if not await self._retry("publish", send):
            return False
        if acks and getattr(acks[-1], "duplicate", False):
            self.duplicates.inc()
        else:
            self.alert_events.inc(status=event.status)
        arrived = self._arrivals.pop(msg_id, None)
        if arrived is not None:
            elapsed = time.monotonic() - arrived
            self.latency.set(elapsed)
            self.latency_sum.inc(elapsed)
            self.latency_count.inc()
        log.info(
            "alert %s",
            event.status,
            extra={"rule": event.rule, "host": event.host, "alert_id": event.id, "value": event.value},
        )
        return True

    async def _retry(self, what: Literal["kv", "publish"], attempt: Callable[[], Awaitable[object]]) -> bool:
        """Run ``attempt`` until it succeeds, backing off; gives up only while stopping."""
        counter = self.kv_failures if what == "kv" else self.publish_failures
        delay = 0.1
        failures = 0
        while True:
            try:
                await attempt()
                return True
            except Exception as exc:  # any NATS/JetStream error is worth another try
                counter.inc()
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "alert %s failed; retrying",
                        "state write" if what == "kv" else "publish",
                        extra={"reason": str(exc) or type(exc).__name__, "attempts": failures},
                    )
                if self._stopping and failures >= 3:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    # Control -----------------------------------------------------------------------------

    async def _on_rules_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        await msg.respond(msgspec.json.encode(self.describe()))

    def describe(self) -> dict[str, Any]:
        """The loaded rules, each with its pending and firing alerts (the control reply)."""
        active: dict[str, list[dict[str, Any]]] = {}
        for state in self._states.values():
            if state.status != "inactive":
                active.setdefault(state.rule, []).append(
                    {
                        "fingerprint": state.fingerprint,
                        "status": state.status,
                        "alert_id": state.alert_id if state.status == "firing" else None,
                        "host": state.host,
                        "labels": {**state.context, **state.labels},
                        "value": state.value,
                        "active_since": state.active_since,
                        "fired_at": state.fired_at,
                    }
                )
        return {
            "rules": [{**rule.describe(), "alerts": active.get(rule.name, [])} for rule in self.rules],
        }


def _msg_id(event: AlertEvent) -> str:
    return f"{event.id}:{event.status}"
