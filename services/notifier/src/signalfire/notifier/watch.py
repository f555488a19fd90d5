"""Who watches Signalfire: the notifier pages when no evaluator judges some hosts, or when
nothing is being stored.

Alerts are the evaluators' to raise, so when every replica is down (or cut off from NATS)
nothing would page about anything, that included; and when every gateway has stopped
storing (down, PostgreSQL unreachable or full) alerts still flow while the dashboard goes
stale and the stream, which keeps a day, fills. The notifier is a process of its own, so it
watches both, each replica every few seconds:

- **evaluation** (``evaluation_watch``): the evaluator leases bucket
  (:mod:`signalfire.partitions`). A replica renews the lease of every partition it judges by
  compare-and-set every poll, so a partition whose lease has not changed (or has been
  missing) for ``evaluation_watch`` seconds, as this replica observed it, is judged by
  nobody: ``EvaluationStopped``.
- **storage** (``storage_watch``): the gateway's durable consumers (every one of the metrics
  stream, listed at each check: ``gateway-metrics``, or one per share of the hosts with ingest
  workers; its three on the alerts stream). One with messages waiting whose
  acknowledged floor has not moved for ``storage_watch`` seconds, as observed here, stores
  nothing: ``StorageStalled``.

Each raises an alert of Signalfire's own, on the host ``signalfire``, and resolves it once
the condition is gone. Exactly once with any number of notifier replicas: a transition is
decided by a compare-and-set of the ``watch.<name>`` key of the notify state bucket (one
replica wins it and names the instance), and the alert event is published on the alerts
stream with the ``Nats-Msg-Id`` the evaluators use (``<id>:<status>``); every replica
publishes it again for :data:`REPUBLISH_FOR` seconds after the transition, so one that won
and died before publishing loses nothing, and the stream keeps one copy. From the stream the
event takes the path of every alert: routes, silences, inhibition, grouping, the ledger's
one delivery, the gateway's alert list and the dashboard. Every duration is measured on the
notifier's own monotonic clock: no clock is compared with another's."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from signalfire.buspolicy import metrics_consumer_share
from signalfire.events import AlertEvent, Severity, encode
from signalfire.partitions import PARTITION_PREFIX, REPLICA_PREFIX, Entry, partition_names, read_bucket
from signalfire.subjects import SELF_HOST
from signalfire.telemetry import Counter, Registry

log = logging.getLogger(__name__)

#: The host of the alerts the notifier raises (``sf.alerts.signalfire``: the one alerts
#: subject a notifier may publish on).
HOST = SELF_HOST
#: After a transition, every replica publishes its event again (the stream drops the copies)
#: for this long: the replica that decided it may have died before publishing.
REPUBLISH_FOR = 60.0
#: How often a watch looks (at most; a quarter of its setting when shorter).
CHECK_EVERY = 5.0
#: The gateway acknowledges a metric batch once its minute's rollups are merged (docs/gateway.md):
#: its consumer's floor moves about once a minute, so a ``storage_watch`` shorter than this
#: pages about a gateway that stores (warned once).
STORAGE_WATCH_MIN = 120.0


class Watch(msgspec.Struct, kw_only=True):
    """The value of a ``watch.<name>`` key: the watch's alert instance, as last decided."""

    id: str
    status: Literal["firing", "resolved"]
    #: When it fired (unix seconds), and when it last changed.
    since: float
    time: float
    #: The event's ``seq``: increases with every transition, across instances.
    seq: int
    #: What was wrong when it fired: the partitions no replica judged, the consumers stalled.
    what: list[str] = []
    #: How much: partitions unjudged, messages waiting.
    value: float = 0.0


class OwnAlert:
    """The transitions of one of Signalfire's own alerts, decided once across the notifier
    replicas (see the module's docstring)."""

    def __init__(
        self,
        state: KeyValue,
        publish: Callable[[AlertEvent], Awaitable[None]],
        *,
        name: str,
        rule: str,
        severity: Severity,
        describe: Callable[[Watch], tuple[str, str]],
        logs: tuple[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self._publish = publish
        self.key = f"watch.{name}"
        self.rule = rule
        self.fingerprint = f"signalfire.{name}"
        self.severity: Severity = severity
        #: The summary and description of an instance.
        self._describe = describe
        #: The log lines of a transition this replica decided: fired (an error), resolved.
        self._logs = logs
        self._clock = clock

    async def update(self, what: list[str], value: float) -> Watch | None:
        """Fire when ``what`` (the trouble) is not empty and the alert is not firing, resolve
        when it is empty and it is; publish the instance for a while after it changed. The
        instance as decided (``None``: never fired)."""
        watch, revision = await self._read()
        now = self._clock()
        if what and (watch is None or watch.status == "resolved"):
            seq = watch.seq + 1 if watch is not None else 1
            new = Watch(
                id=uuid.uuid4().hex, status="firing", since=now, time=now, seq=seq, what=what, value=value
            )
            if await self._write(new, revision):
                log.error(self._logs[0], extra={"what": ",".join(what), "value": value, "alert_id": new.id})
                watch = new
        elif not what and watch is not None and watch.status == "firing":
            new = msgspec.structs.replace(watch, status="resolved", time=now, seq=watch.seq + 1)
            if await self._write(new, revision):
                log.info(self._logs[1], extra={"alert_id": new.id, "seconds": round(now - watch.since, 1)})
                watch = new
        if watch is not None and now - watch.time < REPUBLISH_FOR:
            await self._publish(self.event(watch))
        return watch

    def event(self, watch: Watch) -> AlertEvent:
        """The alert event of ``watch``'s instance in its status."""
        summary, description = self._describe(watch)
        return AlertEvent(
            id=watch.id,
            fingerprint=self.fingerprint,
            rule=self.rule,
            status=watch.status,
            severity=self.severity,
            host=HOST,
            starts_at=watch.since,
            time=watch.time,
            ends_at=watch.time if watch.status == "resolved" else None,
            labels={"component": self.fingerprint.removeprefix("signalfire.")},
            annotations={"summary": summary, "description": description},
            value=watch.value,
            seq=watch.seq,
        )

    async def _read(self) -> tuple[Watch | None, int]:
        try:
            entry = await self.state.get(self.key)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:  # deleted
            return None, entry.revision or 0
        try:
            return msgspec.json.decode(entry.value, type=Watch), entry.revision or 0
        except msgspec.DecodeError:
            log.warning("unreadable watch state replaced", extra={"key": self.key})
            return None, entry.revision or 0

    async def _write(self, watch: Watch, revision: int) -> bool:
        """Compare-and-set the key; whether this replica decided the transition."""
        data = msgspec.json.encode(watch)
        try:
            if revision:
                await self.state.update(self.key, data, last=revision)
            else:
                await self.state.create(self.key, data)
        except KeyWrongLastSequenceError:
            return False  # another replica decided it first: its event is published next time
        return True


class _Watcher:
    """A check run every quarter of its setting (at most :data:`CHECK_EVERY`), while the
    setting is not 0."""

    name = ""
    #: Logged when a check fails (it is tried again next time, and never pages).
    unreadable = ""

    def __init__(
        self, alert: OwnAlert, after: Callable[[], float], checks: Counter, monotonic: Callable[[], float]
    ) -> None:
        self.alert = alert
        self._after = after
        self._checks = checks
        self._monotonic = monotonic
        #: What is watched → (its last value read, 0 while missing; when this replica first saw it so).
        self._observed: dict[str, tuple[int, float]] = {}
        self._stopped = False
        self._nothing_logged = False  # said once: nothing to watch yet

    def stop(self) -> None:
        """End :meth:`run` after the check under way, even one whose cancellation got lost (a
        ``wait_for`` of Python 3.11 whose inner wait completed as it was cancelled swallows it)."""
        self._stopped = True

    async def run(self) -> None:
        """Check until cancelled or stopped; a failed check is logged and counted, and tried
        next time."""
        while not self._stopped:
            after = self._after()
            if after > 0:
                try:
                    await self.check(after)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.counted("failed")
                    log.warning(self.unreadable, extra={"reason": str(exc) or type(exc).__name__})
                    # What was not seen meanwhile (NATS away: nothing renews, nothing is
                    # stored) is timed from the next read, not from the last one before.
                    self._observed = {}
            await asyncio.sleep(min(CHECK_EVERY, after / 4) if after > 0 else CHECK_EVERY)

    async def check(self, after: float) -> None:
        raise NotImplementedError

    def counted(self, result: str) -> None:
        self._checks.labels(watch=self.name, result=result).inc()

    def nothing_yet(self, what: str) -> None:
        """Nothing to watch yet: the check counts as ``ok``, and ``what`` is logged once."""
        if not self._nothing_logged:
            self._nothing_logged = True
            log.info(what)
        self.counted("ok")

    def unchanged(self, values: dict[str, int], after: float) -> list[str]:
        """Record ``values`` as read now; those that have not changed (or been missing, 0) for
        ``after`` seconds as observed here, sorted. Only the names given are kept."""
        now = self._monotonic()
        observed: dict[str, tuple[int, float]] = {}
        for name, value in values.items():
            seen = self._observed.get(name)
            observed[name] = seen if seen is not None and seen[0] == value else (value, now)
        self._observed = observed
        return sorted(name for name, (_, t) in observed.items() if now - t >= after)


def checks_counter(registry: Registry) -> Counter:
    return registry.counter(
        "watch_checks",
        "Checks of what the notifier watches (`watch`: evaluation, storage): `ok`, `trouble` "
        "(no evaluator judges some partitions; nothing stored), `failed` (unreadable; logged)",
        ["watch", "result"],
    )


class EvaluationWatch(_Watcher):
    """One notifier replica's watch over the evaluator leases: ``EvaluationStopped``."""

    name = "evaluation"
    unreadable = "evaluator leases not read; evaluation not watched until they are"

    def __init__(
        self,
        leases: KeyValue,
        alert: OwnAlert,
        after: Callable[[], float],
        *,
        registry: Registry,
        checks: Counter,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(alert, after, checks, monotonic)
        self.leases = leases
        self._count = 0  # host partitions, as the newest announcement said
        self.unjudged_gauge = registry.gauge(
            "unjudged_partitions",
            "Host partitions no evaluator replica has judged for evaluation_watch, as this replica "
            "last read the leases",
        )

    def _wanted(self, entries: dict[str, Entry]) -> list[str]:
        """The lease keys there should be: every partition of the count the newest announcement
        names (remembered when every replica withdrew its own); without one, the leases there
        are."""
        announced = [
            entry
            for key, entry in entries.items()
            if key.startswith(REPLICA_PREFIX) and entry.lease.count > 0
        ]
        if announced:
            self._count = max(announced, key=lambda entry: entry.stored).lease.count
        if self._count:
            return [PARTITION_PREFIX + name for name in partition_names(self._count)]
        return [key for key in entries if key.startswith(PARTITION_PREFIX)]

    async def check(self, after: float) -> None:
        """Read the leases, and fire or resolve the alert when its condition changed."""
        entries = await read_bucket(self.leases)
        keys = {key: entries[key].revision if key in entries else 0 for key in self._wanted(entries)}
        unjudged = [key.removeprefix(PARTITION_PREFIX) for key in self.unchanged(keys, after)]
        if not keys:
            self.nothing_yet(
                "no evaluator partition lease seen yet: evaluation is watched from the first one"
            )
            return
        self.unjudged_gauge.set(len(unjudged))
        self.counted("trouble" if unjudged else "ok")
        await self.alert.update(unjudged, float(len(unjudged)))


def evaluation_alert(
    state: KeyValue, publish: Callable[[AlertEvent], Awaitable[None]], clock: Callable[[], float] = time.time
) -> OwnAlert:
    def describe(watch: Watch) -> tuple[str, str]:
        return (
            f"No evaluator judges host partitions {', '.join(watch.what)}: nothing about their hosts alerts",
            "Every evaluator replica that judged them stopped renewing its leases: down, or cut off "
            "from NATS. Start one (signalfire evaluator), or see `signalfire evaluator status`; this "
            "resolves once every partition is judged again.",
        )

    return OwnAlert(
        state,
        publish,
        name="evaluation",
        rule="EvaluationStopped",
        severity="critical",
        describe=describe,
        logs=(
            "no evaluator judges these host partitions: nothing about their hosts alerts",
            "every host partition is judged again",
        ),
        clock=clock,
    )


class StorageWatch(_Watcher):
    """One notifier replica's watch over the gateway's durable consumers: ``StorageStalled``."""

    name = "storage"
    unreadable = "the gateway's consumers not read; storage not watched until they are"

    def __init__(
        self,
        js: JetStreamContext,
        metrics_stream: str,
        consumers: Iterable[tuple[str, str]],
        alert: OwnAlert,
        after: Callable[[], float],
        *,
        registry: Registry,
        checks: Counter,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(alert, after, checks, monotonic)
        self.js = js
        #: Every consumer of this stream whose name is a metrics consumer's is the gateway's.
        self.metrics_stream = metrics_stream
        #: (stream, durable) of the gateway's other consumers.
        self.consumers = list(consumers)
        self._short_warned = False
        self.waiting_gauge = registry.gauge(
            "unstored_messages",
            "Messages the gateway's consumers have not acknowledged (stored), as this replica last read them",
        )

    async def check(self, after: float) -> None:
        """Read the consumers, and fire or resolve the alert when its condition changed."""
        if after < STORAGE_WATCH_MIN and not self._short_warned:
            self._short_warned = True
            log.warning(
                "storage_watch is shorter than the gateway holds a batch before acknowledging it "
                "(until its minute's rollups are merged): expect pages about a gateway that stores",
                extra={"storage_watch": after, "at_least": STORAGE_WATCH_MIN},
            )
        floors: dict[str, int] = {}
        waiting: dict[str, int] = {}
        infos = [
            info
            for info in await self.js.consumers_info(self.metrics_stream)
            if metrics_consumer_share(info.name) is not None
        ]
        for stream, durable in self.consumers:
            try:
                infos.append(await self.js.consumer_info(stream, durable))
            except NotFoundError:
                continue  # no gateway has made it yet (or it was deleted): not watched
        for info in infos:
            durable = info.name
            waiting[durable] = (info.num_pending or 0) + (info.num_ack_pending or 0)
            # A consumer with nothing waiting is not stalled, however long its floor stood.
            floors[durable] = info.ack_floor.stream_seq if info.ack_floor and waiting[durable] else -1
        if not floors:
            self.nothing_yet("no consumer of the gateway's seen yet: storage is watched from the first one")
            return
        # -1 (nothing waiting) changes nothing below: counted as moving.
        stalled = [d for d in self.unchanged(floors, after) if floors[d] != -1]
        self.waiting_gauge.set(sum(waiting.values()))
        self.counted("trouble" if stalled else "ok")
        await self.alert.update(stalled, float(sum(waiting[d] for d in stalled)))


def storage_alert(
    state: KeyValue, publish: Callable[[AlertEvent], Awaitable[None]], clock: Callable[[], float] = time.time
) -> OwnAlert:
    def describe(watch: Watch) -> tuple[str, str]:
        return (
            f"Nothing is being stored: the gateway's {', '.join(watch.what)} took nothing while "
            f"{watch.value:,.0f} messages wait",
            "No gateway acknowledged a message of these consumers: every gateway is down, or cannot "
            "write to PostgreSQL (down, full, refusing). The dashboard shows nothing new; the streams "
            "keep what waits (the metrics for `metrics_max_age`, a day by default), then drop the "
            "oldest. See the gateways' logs; this resolves once they store again.",
        )

    return OwnAlert(
        state,
        publish,
        name="storage",
        rule="StorageStalled",
        severity="critical",
        describe=describe,
        logs=(
            "nothing is being stored: these consumers of the gateway's take nothing while messages wait",
            "the gateway stores again",
        ),
        clock=clock,
    )


def publisher(js: JetStreamContext, subject: str) -> Callable[[AlertEvent], Awaitable[None]]:
    """Publish an event of an own alert on ``subject`` as the evaluators publish theirs: once
    per transition, by its ``Nats-Msg-Id``."""

    async def publish(alert: AlertEvent) -> None:
        await js.publish(subject, encode(alert), headers={"Nats-Msg-Id": f"{alert.id}:{alert.status}"})

    return publish
