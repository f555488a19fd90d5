"""Who watches the evaluators: the notifier pages when no evaluator replica judges some hosts.

Alerts are the evaluators' to raise, so when every replica is down (or cut off from NATS)
nothing would page about anything, that included. Each notifier replica reads the evaluator
leases bucket every few seconds (:mod:`signalfire.partitions`): a replica renews the lease of
every partition it judges by compare-and-set every poll, so a partition whose lease has not
changed (or has been missing) for ``evaluation_watch`` seconds, as this replica observed it,
is judged by nobody. Then the notifier raises an alert of its own, ``EvaluationStopped`` on
the host ``signalfire``, and resolves it once every partition is judged again.

Exactly once with any number of notifier replicas: a transition is decided by a
compare-and-set of the ``watch.evaluation`` key of the notify state bucket (one replica wins
it and names the instance), and the alert event is published on the alerts stream with the
``Nats-Msg-Id`` the evaluators use (``<id>:<status>``); every replica publishes it again for
:data:`REPUBLISH_FOR` seconds after the transition, so one that won and died before
publishing loses nothing, and the stream keeps one copy. From the stream the event takes the
path of every alert: routes, silences, inhibition, grouping, the ledger's one delivery, the
gateway's alert list and the dashboard."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from signalfire.events import AlertEvent, encode
from signalfire.partitions import PARTITION_PREFIX, REPLICA_PREFIX, Entry, partition_names, read_bucket
from signalfire.subjects import SELF_HOST
from signalfire.telemetry import Registry

log = logging.getLogger(__name__)

#: The alert the notifier raises, on Signalfire's own host (``sf.alerts.signalfire``: the one
#: alerts subject a notifier may publish on).
RULE = "EvaluationStopped"
HOST = SELF_HOST
FINGERPRINT = "signalfire.evaluation"
#: The key of the notify state bucket deciding the transitions.
KEY = "watch.evaluation"
#: After a transition, every replica publishes its event again (the stream drops the copies)
#: for this long: the replica that decided it may have died before publishing.
REPUBLISH_FOR = 60.0
#: How often the leases are read (at most; a quarter of ``evaluation_watch`` when shorter).
CHECK_EVERY = 5.0


class Watch(msgspec.Struct, kw_only=True):
    """The value of :data:`KEY`: the watch's alert instance, as last decided."""

    id: str
    status: Literal["firing", "resolved"]
    #: When it fired (unix seconds), and when it last changed.
    since: float
    time: float
    #: The event's ``seq``: increases with every transition, across instances.
    seq: int
    #: The partitions no replica judged, when it fired.
    unjudged: list[str] = []


class EvaluationWatch:
    """One notifier replica's watch over the evaluator leases."""

    def __init__(
        self,
        leases: KeyValue,
        state: KeyValue,
        publish: Callable[[AlertEvent], Awaitable[None]],
        after: Callable[[], float],
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.state = state
        self._publish = publish
        self._after = after
        self._clock = clock
        self._monotonic = monotonic
        #: Lease key → (its revision, 0 while missing; when this replica first saw it so).
        self._observed: dict[str, tuple[int, float]] = {}
        self._nothing_logged = False
        self._count = 0  # host partitions, as the newest announcement said
        self.unjudged_gauge = registry.gauge(
            "unjudged_partitions",
            "Host partitions no evaluator replica has judged for evaluation_watch, as this replica "
            "sees the leases",
        )
        self.checks = registry.counter(
            "evaluation_checks",
            "Reads of the evaluator leases: `judged` (every partition), `unjudged`, `failed` (unreadable)",
            ["result"],
        )

    async def run(self) -> None:
        """Check until cancelled; a failed check is logged and counted, and tried next time."""
        while True:
            after = self._after()
            if after > 0:
                try:
                    await self.check(after)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.checks.labels(result="failed").inc()
                    log.warning(
                        "evaluator leases not read; evaluation not watched until they are",
                        extra={"reason": str(exc) or type(exc).__name__},
                    )
            await asyncio.sleep(min(CHECK_EVERY, after / 4) if after > 0 else CHECK_EVERY)

    def unjudged(self, keys: dict[str, int], after: float) -> list[str]:
        """Record ``keys`` (lease key → revision, 0: missing) as read now; the partitions whose
        lease has not changed, or been missing, for ``after`` seconds as observed here."""
        now = self._monotonic()
        observed: dict[str, tuple[int, float]] = {}
        for key, revision in keys.items():
            seen = self._observed.get(key)
            observed[key] = seen if seen is not None and seen[0] == revision else (revision, now)
        self._observed = observed
        return sorted(
            key.removeprefix(PARTITION_PREFIX) for key, (_, t) in observed.items() if now - t >= after
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
        unjudged = self.unjudged(keys, after)
        if not keys:
            if not self._nothing_logged:
                self._nothing_logged = True
                log.info("no evaluator partition lease seen yet: evaluation is watched from the first one")
            self.checks.labels(result="judged").inc()
            return
        self.unjudged_gauge.set(len(unjudged))
        self.checks.labels(result="unjudged" if unjudged else "judged").inc()
        watch, revision = await self._read()
        now = self._clock()
        if unjudged and (watch is None or watch.status == "resolved"):
            seq = watch.seq + 1 if watch is not None else 1
            new = Watch(id=uuid.uuid4().hex, status="firing", since=now, time=now, seq=seq, unjudged=unjudged)
            if await self._write(new, revision):
                log.error(
                    "no evaluator judges these host partitions: nothing about their hosts alerts",
                    extra={"partitions": ",".join(unjudged), "after": after, "alert_id": new.id},
                )
                watch = new
        elif not unjudged and watch is not None and watch.status == "firing":
            new = msgspec.structs.replace(watch, status="resolved", time=now, seq=watch.seq + 1)
            if await self._write(new, revision):
                log.info(
                    "every host partition is judged again",
                    extra={"alert_id": new.id, "seconds": round(now - watch.since, 1)},
                )
                watch = new
        if watch is not None and now - watch.time < REPUBLISH_FOR:
            await self._publish(event(watch))

    async def _read(self) -> tuple[Watch | None, int]:
        try:
            entry = await self.state.get(KEY)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:  # deleted
            return None, entry.revision or 0
        try:
            return msgspec.json.decode(entry.value, type=Watch), entry.revision or 0
        except msgspec.DecodeError:
            log.warning("unreadable evaluation watch state replaced", extra={"key": KEY})
            return None, entry.revision or 0

    async def _write(self, watch: Watch, revision: int) -> bool:
        """Compare-and-set :data:`KEY`; whether this replica decided the transition."""
        data = msgspec.json.encode(watch)
        try:
            if revision:
                await self.state.update(KEY, data, last=revision)
            else:
                await self.state.create(KEY, data)
        except KeyWrongLastSequenceError:
            return False  # another replica decided it first: its event is published next time
        return True


def event(watch: Watch) -> AlertEvent:
    """The alert event of ``watch``'s instance in its status."""
    partitions = ", ".join(watch.unjudged)
    summary = f"No evaluator judges host partitions {partitions}: nothing about their hosts alerts"
    return AlertEvent(
        id=watch.id,
        fingerprint=FINGERPRINT,
        rule=RULE,
        status=watch.status,
        severity="critical",
        host=HOST,
        starts_at=watch.since,
        time=watch.time,
        ends_at=watch.time if watch.status == "resolved" else None,
        labels={"component": "evaluator"},
        annotations={
            "summary": summary,
            "description": (
                "Every evaluator replica that judged them stopped renewing its leases: down, or cut "
                "off from NATS. Start one (signalfire evaluator), or see `signalfire evaluator "
                "status`; this resolves once every partition is judged again."
            ),
        },
        value=float(len(watch.unjudged)),
        seq=watch.seq,
    )


def publisher(js: JetStreamContext, subject: str) -> Callable[[AlertEvent], Awaitable[None]]:
    """Publish an event of the watch on ``subject`` as the evaluators publish theirs: once per
    transition, by its ``Nats-Msg-Id``."""

    async def publish(alert: AlertEvent) -> None:
        await js.publish(subject, encode(alert), headers={"Nats-Msg-Id": f"{alert.id}:{alert.status}"})

    return publish
