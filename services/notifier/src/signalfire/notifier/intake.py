"""The intake: alert events and actions from JetStream to the :mod:`pipeline`, each acked
once its outcome is recorded.

1. Two durable pull consumers on the alerts stream (:data:`DURABLE` for alert events,
   :data:`ACTIONS_DURABLE` for actions) are fetched while fewer than ``max_in_flight``
   events are being worked on; each event is a task of its own.
2. A malformed message is counted, logged and terminated.
3. Events of one fingerprint are handled in stream order (a lock per fingerprint).
4. An event whose message another replica has claimed (:class:`Busy`) waits here, not in
   JetStream's redelivery, until that claim is done or expired.
5. One heartbeat keeps both the events being worked on (``in_progress``) and our own
   claims in the ledger alive (see :class:`~signalfire.notifier.config.Timings`).
6. JetStream's max-deliveries advisory turns an event it gave up on into dead letters
   (:class:`GiveUps`).

An event is acked only after the pipeline has recorded its outcome; one that could not
finish (NATS trouble, a stop) is left for redelivery, and the ledger keeps channels that
were already sent its message from being sent it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg

from signalfire.bus import bus_unavailable
from signalfire.consumers import Backoff, Fetcher, ensure_durable
from signalfire.events import AlertAction, AlertEvent, PayloadError, decode
from signalfire.notifier.config import NotifyConfig
from signalfire.notifier.dispatch import Busy
from signalfire.notifier.ledger import DeliveryLedger
from signalfire.notifier.pipeline import Pipeline
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.notifier")

#: The durable consumers every notifier replica binds to.
DURABLE = "notifier"
ACTIONS_DURABLE = "notifier-actions"
#: How long :meth:`Intake.drain` lets in-flight deliveries finish.
DRAIN_TIMEOUT = 10.0
#: Pauses after a failed fetch (NATS away): 0.5 s, doubled up to 5 s, reset by a good fetch.
FETCH_BACKOFF = Backoff(first=0.5, cap=5.0)
#: How long an event waits out NATS trouble (:func:`~signalfire.bus.bus_unavailable`) in
#: hand, retrying every :data:`BUS_RETRY`, before it is nak'ed to JetStream's redelivery. Each
#: redelivery uses one of the event's ``max_deliver`` deliveries, ``heartbeat`` apart: when a
#: JetStream leader node dies the alerts stream can deliver again while the ledger's bucket
#: still elects its leader (4 to 11 s measured), and five deliveries a second apart
#: (``ack_wait`` 3 s) let JetStream give up on the event, a lost notification
#: (tests/faults/test_nats_leader_load.py). Bounded because a publish the bus's permissions
#: deny also times out: such an event still reaches ``max_deliver`` and a dead letter.
BUS_PATIENCE = 60.0
#: Pauses between those retries: 0.25 s, doubled up to 2 s.
BUS_RETRY = Backoff(first=0.25, cap=2.0)
#: Queue group of the max-deliveries advisory subscription: one replica records each.
ADVISORY_QUEUE = "signalfire-notifier"


def max_deliveries_subject(stream: str, durable: str) -> str:
    """Where JetStream announces that it stopped redelivering a message of ``durable``."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"


class BusTrouble:
    """The NATS trouble one piece of work has met so far: :meth:`pause` says how long to wait
    before trying it again, or ``None`` (a refusal, or trouble past :data:`BUS_PATIENCE`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        self._pause: float | None = None
        #: Whether the last :meth:`pause` was the first of this trouble (log it once).
        self.first = False

    def pause(self, exc: BaseException) -> float | None:
        now = self._clock()
        if not bus_unavailable(exc) or (self._since is not None and now - self._since > BUS_PATIENCE):
            return None
        self.first = self._since is None
        if self._since is None:
            self._since = now
        self._pause = BUS_RETRY.delay(self._pause)
        return self._pause


class MaxDeliveries(msgspec.Struct):
    """The part of JetStream's ``io.nats.jetstream.advisory.v1.max_deliver`` advisory we use."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


class Intake:
    """Feeds ``pipeline`` from JetStream. ``config`` is the one the service started with: the
    intake reads only settings that take effect at a restart (``ack_wait``, ``max_deliver``,
    ``max_in_flight``, ``first_start_backlog``, ``claim_lease``). Use: :meth:`subscribe`,
    :meth:`run`; to stop, :meth:`drain` then :meth:`close`."""

    def __init__(
        self,
        config: NotifyConfig,
        js: JetStreamContext,
        pipeline: Pipeline,
        ledger: DeliveryLedger,
        registry: Registry,
    ) -> None:
        self._config = config
        self._subjects = config.nats.subjects
        self._js = js
        self._pipeline = pipeline
        self._ledger = ledger
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        # id(msg) → (msg, when JetStream last heard of it): the events being worked on
        self._working: dict[int, tuple[Msg, float]] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        # time.monotonic() of the intake's last progress: a fetch of alert events, an event finished
        self._progress: float | None = None
        # fingerprint → (lock, users): events of one alert are handled in stream order
        self._order: dict[str, tuple[asyncio.Lock, int]] = {}

        self.alerts_received = registry.counter(
            "alerts_received", "Alert events received, by status", ["status"]
        )
        self.actions_received = registry.counter(
            "actions_received", "Alert actions received, by action", ["action"]
        )
        self.rejected = registry.counter(
            "rejected_messages",
            "Messages on the alerts or actions subjects that were not valid payloads",
            ["reason"],
        )
        self.errors = registry.counter(
            "processing_errors", "Alert events or actions left for redelivery after a NATS error"
        )
        self.bus_waits = registry.counter(
            "bus_waits", "Retries of an alert event or action that met NATS trouble, waited out in hand"
        )
        self.bus_errors = registry.counter(
            "bus_errors", "NATS errors while fetching (retried with back-off)", ["consumer"]
        )
        self.busy_waits = registry.counter(
            "busy_waits", "Times an event waited for a message another replica (or a dead one) claimed"
        )
        self.advisories = GiveUps(js, self._subjects.alerts_stream, pipeline, registry)
        registry.gauge(
            "intake_idle_seconds",
            "Seconds since the intake last made progress (a fetch of alert events answered, an "
            "event finished): about a second when idle, growing while every max_in_flight slot is "
            "held by deliveries that do not end (the heartbeat stops past heartbeat.stalled_after)",
            function=self.idle_seconds,
        )

    async def subscribe(self, nc: NATS) -> None:
        """Bind (create or converge) both durable consumers and subscribe to JetStream's
        max-deliveries advisories for them."""
        alerts = await self._durable(DURABLE, self._subjects.all_alerts, "delivers alert events")
        actions = await self._durable(ACTIONS_DURABLE, self._subjects.actions, "follows alert actions")
        self._subs = [alerts, actions]
        await self.advisories.subscribe(nc)

    @property
    def in_flight(self) -> int:
        """Alert events and actions being worked on now."""
        return len(self._in_flight)

    def idle_seconds(self) -> float:
        """Seconds since the intake last made progress: a fetch of alert events answered
        (empty or not: an idle one returns every second, one failing every 5 s at most) or an
        event finished. It grows while every ``max_in_flight`` slot is held by a delivery that
        does not end, or if the fetching stopped; a replica so stuck pages nobody, and the
        heartbeat stops on it. 0 before :meth:`run`. Also ``signalfire_notifier_intake_idle_seconds``."""
        if self._progress is None:
            return 0.0
        return time.monotonic() - self._progress

    def _progressed(self, _task: object = None) -> None:
        self._progress = time.monotonic()

    def run(self) -> None:
        """Start fetching (after :meth:`subscribe`) and the heartbeat."""
        self._progressed()
        alerts, actions = self._subs
        self._loops = [
            asyncio.create_task(
                self._fetch_loop(alerts, DURABLE, self._accept_alert), name="notifier-intake-alerts"
            ),
            asyncio.create_task(
                self._fetch_loop(actions, ACTIONS_DURABLE, self._accept_action),
                name="notifier-intake-actions",
            ),
        ]
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="notifier-intake-heartbeat")

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Its loops (fetching each consumer, the heartbeat), once running."""
        return [*self._loops, *([self._heartbeat_task] if self._heartbeat_task is not None else [])]

    async def drain(self) -> None:
        """Stop fetching, give the events in hand :data:`DRAIN_TIMEOUT` to finish, then stop
        the heartbeat. Unfinished events are not acked: JetStream redelivers them, and the
        ledger prevents repeats."""
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            self._heartbeat_task = None

    async def close(self) -> None:
        """Unsubscribe from the consumers and the advisories (the durables stay)."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        await self.advisories.close()

    async def _durable(self, durable: str, subject: str, what: str) -> JetStreamContext.PullSubscription:
        stream = self._subjects.alerts_stream
        config = self._config
        wanted = ConsumerConfig(
            durable_name=durable,
            description=f"Signalfire notifier: {what}",
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=float(config.ack_wait),
            max_deliver=config.max_deliver,
            max_ack_pending=max(1000, config.max_in_flight * 4),
            # A notifier starting for the first time on an old stream must not page
            # people for last month's alerts; a short backlog covers a concurrent start.
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.now(UTC) - timedelta(seconds=float(config.first_start_backlog)),
        )
        return await ensure_durable(
            self._js, stream, wanted, converge=("ack_wait", "max_deliver", "filter_subject")
        )

    async def _fetch_loop(
        self, sub: JetStreamContext.PullSubscription, name: str, accept: Callable[[Msg], Awaitable[None]]
    ) -> None:
        errors = self.bus_errors.labels(consumer=name)
        fetcher = Fetcher(sub, name, backoff=FETCH_BACKOFF, on_error=lambda _exc: errors.inc())
        while True:
            free = self._config.max_in_flight - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            messages = await fetcher.fetch(min(free, 100))
            if name == DURABLE:
                self._progressed()
            for msg in messages:
                await accept(msg)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        task.add_done_callback(self._progressed)

    async def _reject(self, msg: Msg, what: str, exc: Exception) -> None:
        self.rejected.labels(reason="malformed").inc()
        log.warning(f"rejected malformed {what}", extra={"subject": msg.subject, "reason": str(exc)})
        await msg.term()

    async def _accept_alert(self, msg: Msg) -> None:
        try:
            alert = decode(msg.data, AlertEvent)
        except PayloadError as exc:
            await self._reject(msg, "alert event", exc)
            return
        self.alerts_received.labels(status=alert.status).inc()
        # Tasks start in creation order, so each takes its fingerprint's lock in stream order.
        self._spawn(self._settle(msg, alert.id, alert.fingerprint, lambda: self._pipeline.alert(alert)))

    async def _accept_action(self, msg: Msg) -> None:
        try:
            action = decode(msg.data, AlertAction)
        except PayloadError as exc:
            await self._reject(msg, "alert action", exc)
            return
        self.actions_received.labels(action=action.action).inc()
        self._spawn(
            self._settle(
                msg,
                action.alert_id,
                action.fingerprint or action.alert_id,
                lambda: self._pipeline.action(action),
            )
        )

    async def _settle(
        self, msg: Msg, alert_id: str, fingerprint: str, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``work()`` for ``msg`` and ack it; nak it (for redelivery) when it could not finish.

        While another replica holds a claim ``work`` needs (:class:`Busy`), the event waits
        here, kept alive by the heartbeat, and ``work`` runs again when that claim should be
        done or expired: waiting uses none of the event's ``max_deliver`` deliveries, so
        JetStream cannot give up on it before a dead replica's lease runs out. NATS trouble
        (:func:`~signalfire.bus.bus_unavailable`: a stream or bucket electing a new leader, a
        node gone) is waited out here too, for up to :data:`BUS_PATIENCE`, before the event is
        left to JetStream's redelivery.
        """
        key = id(msg)
        timings = self._config.timings
        self._working[key] = (msg, asyncio.get_running_loop().time())
        try:
            try:
                async with self._in_order(fingerprint):
                    trouble = BusTrouble()
                    while True:
                        try:
                            await work()
                            break
                        except Busy as busy:
                            self.busy_waits.inc()
                            await asyncio.sleep(timings.busy_wait(busy.wait))
                        except Exception as exc:
                            pause = trouble.pause(exc)
                            if pause is None:
                                raise
                            self.bus_waits.inc()
                            if trouble.first:
                                log.warning(
                                    "NATS unavailable, retrying",
                                    extra={"alert_id": alert_id, "reason": f"{type(exc).__name__}: {exc}"},
                                )
                            await asyncio.sleep(pause)
                    await msg.ack()
            finally:
                del self._working[key]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # NATS trouble while recording: leave the event for redelivery; the ledger
            # keeps channels that already succeeded from sending again.
            self.errors.inc()
            log.warning(
                "left for redelivery",
                extra={
                    "subject": msg.subject,
                    "alert_id": alert_id,
                    "reason": f"{type(exc).__name__}: {exc}",
                },
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=timings.heartbeat)

    @contextlib.asynccontextmanager
    async def _in_order(self, fingerprint: str) -> AsyncIterator[None]:
        lock, users = self._order.get(fingerprint, (asyncio.Lock(), 0))
        self._order[fingerprint] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._order[fingerprint]
            if users == 1:
                del self._order[fingerprint]
            else:
                self._order[fingerprint] = (lock, users - 1)

    async def _heartbeat(self) -> None:
        """Tell JetStream the events still being worked on (retries waiting out their backoff,
        events queued behind their alert's earlier ones) are not lost: each hears
        ``in_progress`` at least every half ``ack_wait``. One loop for all of them, rather
        than a timer task per event, which cost a few percent of the CPU at 1,000 alerts/s."""
        loop = asyncio.get_running_loop()
        while True:
            timings = self._config.timings
            period = timings.heartbeat
            await asyncio.sleep(period / 2)
            now = loop.time()
            due = [(key, msg) for key, (msg, last) in self._working.items() if now - last >= period]
            for key, msg in due:
                self._working[key] = (msg, now)
            # a failure is left to the next beat (or to redelivery, which the ledger makes safe)
            await asyncio.gather(
                *(msg.in_progress() for _, msg in due),
                self._refresh_claims(),
                return_exceptions=True,
            )

    async def _refresh_claims(self) -> None:
        try:
            await self._ledger.refresh_held()
        except Exception as exc:
            log.warning("could not refresh delivery claims", extra={"reason": f"{type(exc).__name__}: {exc}"})


class GiveUps:
    """JetStream's max-deliveries advisories for both durables (queue group
    :data:`ADVISORY_QUEUE`, so one replica handles each): an alert event JetStream stopped
    redelivering becomes dead letters (:meth:`Pipeline.give_up`), an action is logged."""

    def __init__(self, js: JetStreamContext, stream: str, pipeline: Pipeline, registry: Registry) -> None:
        self._js = js
        self._stream = stream
        self._pipeline = pipeline
        self._subs: list[Subscription] = []
        self.given_up = registry.counter(
            "events_given_up",
            "Alert events or actions JetStream stopped redelivering (max_deliver reached)",
            ["consumer"],
        )

    async def subscribe(self, nc: NATS) -> None:
        """Listen for the advisories of :data:`DURABLE` and :data:`ACTIONS_DURABLE`."""
        for durable in (DURABLE, ACTIONS_DURABLE):
            self._subs.append(
                await nc.subscribe(
                    max_deliveries_subject(self._stream, durable),
                    queue=ADVISORY_QUEUE,
                    cb=self._on_max_deliveries,
                )
            )

    async def close(self) -> None:
        """Stop listening (another replica's subscription in the queue group takes over)."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    async def _look_up(self, notice: MaxDeliveries) -> RawStreamMsg:
        """The message JetStream gave up on. NATS trouble is waited out (up to
        :data:`BUS_PATIENCE`): the advisory comes once, and JetStream often gives up on an
        event precisely because the bus is in trouble, e.g. while a stream elects its leader."""
        trouble = BusTrouble()
        while True:
            try:
                return await self._js.get_msg(notice.stream, notice.stream_seq)
            except Exception as exc:
                pause = trouble.pause(exc)
                if pause is None:
                    raise
                await asyncio.sleep(pause)

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """JetStream gave up on an alert event (or action): record a dead letter for every
        channel that has not been sent its message, and free claims nobody will finish, so
        the loss is visible rather than silent."""
        try:
            notice = msgspec.json.decode(advisory.data, type=MaxDeliveries)
            stored = await self._look_up(notice)
        except Exception as exc:
            log.error(
                "JetStream gave up on a message that could not be looked up",
                extra={"subject": advisory.subject, "reason": f"{type(exc).__name__}: {exc}"},
            )
            return
        self.given_up.labels(consumer=notice.consumer).inc()
        if notice.consumer != DURABLE:
            log.error(
                "JetStream gave up on an alert action after max_deliver deliveries",
                extra={"seq": notice.stream_seq, "deliveries": notice.deliveries, "subject": stored.subject},
            )
            return
        try:
            alert = decode(stored.data or b"", AlertEvent)
        except PayloadError:
            return  # a malformed event was already counted and terminated
        log.error(
            "JetStream gave up on an alert event after max_deliver deliveries",
            extra={"alert_id": alert.id, "seq": notice.stream_seq, "deliveries": notice.deliveries},
        )
        try:
            await self._pipeline.give_up(alert, notice.deliveries)
        except Exception as exc:
            log.error(
                "could not record the dead letters of a given-up alert event",
                extra={"alert_id": alert.id, "reason": f"{type(exc).__name__}: {exc}"},
            )
