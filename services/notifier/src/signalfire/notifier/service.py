"""The notifier service: alert events and actions from JetStream → the pipeline → channels.

For each alert event (one task per event, events of one fingerprint in order):

1. decode the :class:`AlertEvent` (a malformed message is counted, logged and terminated);
2. **route** it (:mod:`routing`) to the routes it matches;
3. per route: a firing alert on a ``group_wait``/``digest`` route joins a **batch**
   (:mod:`group`); otherwise it is **tracked** (:mod:`tracking`, for escalation, repeats and
   the resolved notice) and sent now; a resolved alert goes out at once to the channels
   that were told it fired;
4. sending (:mod:`dispatch`): **silence** and **inhibition** suppress, the **ledger** claim
   makes it once, **delivery** retries under the channel's **rate limit**, then the
   **fallback** channel, then a **dead-letter** record; every attempt is a DeliveryResult;
5. ack the event once the outcome is recorded. An event whose message another replica has
   claimed waits here (not in JetStream's redelivery) until that claim is done or expired;
   one heartbeat keeps both the waiting events and our own claims alive (see
   :class:`~signalfire.notifier.config.Timings`), and JetStream's max-deliveries advisory
   turns an event it gave up on into dead letters.

Actions (``ack``/``unack``/``resolve``) change the tracks; the :mod:`scheduler` sends the
escalation steps, repeats and batches that come due. All state is in ``sf_notify_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from signalfire.bus import connect, ensure_streams
from signalfire.config import ConfigError
from signalfire.consumers import Backoff, Fetcher, ensure_durable
from signalfire.events import AlertAction, AlertEvent, DeliveryResult, PayloadError, Silence, decode, encode
from signalfire.matchers import matches
from signalfire.notifier import inhibit, silence
from signalfire.notifier.channels import Channel, ChannelContext, Notification, build_channel
from signalfire.notifier.channels.http import new_session, quiet_url_loggers
from signalfire.notifier.config import NotifyConfig, load_notify_config, matcher_list
from signalfire.notifier.deadletter import max_deliveries
from signalfire.notifier.dispatch import Busy, Dispatcher, Outcome
from signalfire.notifier.group import Batch, add, batch_key, batched, group_of, remove
from signalfire.notifier.ledger import DeliveryLedger
from signalfire.notifier.mirror import Mirror
from signalfire.notifier.routing import alert_fields, matching
from signalfire.notifier.scheduler import Scheduler, merge, references, told
from signalfire.notifier.state import NotifyState
from signalfire.notifier.tracking import Track, alert_key, track_key
from signalfire.telemetry import Registry, parse_listen, serve_metrics

log = logging.getLogger("signalfire.notifier")

#: The durable consumers every notifier replica binds to.
DURABLE = "notifier"
ACTIONS_DURABLE = "notifier-actions"
#: How long :meth:`NotifierService.stop` lets in-flight deliveries finish.
DRAIN_TIMEOUT = 10.0
#: Pauses after a failed fetch (NATS away): 0.5 s, doubled up to 5 s, reset by a good fetch.
FETCH_BACKOFF = Backoff(first=0.5, cap=5.0)
#: Settings a reload cannot change in a running notifier.
RESTART_SETTINGS = (
    "nats",
    "ack_wait",
    "claim_lease",
    "max_deliver",
    "max_in_flight",
    "first_start_backlog",
    "metrics_listen",
    "log_level",
    "log_format",
)
#: Queue group of the max-deliveries advisory subscription: one replica records each.
ADVISORY_QUEUE = "signalfire-notifier"


def max_deliveries_subject(stream: str, durable: str) -> str:
    """Where JetStream announces that it stopped redelivering a message of ``durable``."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"


class MaxDeliveries(msgspec.Struct):
    """The part of JetStream's ``io.nats.jetstream.advisory.v1.max_deliver`` advisory we use."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


class NotifierService:
    """Delivers alert events to people. ``nc`` may be passed in (tests); else it is created
    in :meth:`start` from ``config.nats`` and closed in :meth:`stop`. ``clock`` is the one
    clock every decision uses (tests pass their own)."""

    def __init__(
        self,
        config: NotifyConfig,
        nc: NATS | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        config_path: str | None = None,
    ) -> None:
        problems = config.problems()
        if problems:
            field, reason = problems[0]
            raise ConfigError(reason, field=field)
        self.config = config
        #: The file ``config`` came from: :meth:`reload_file` reads it again, and it is
        #: watched for changes every ``watch_interval``.
        self.config_path = config_path
        self._file = self._file_signature()
        self._reload_lock = asyncio.Lock()
        self._nc = nc
        self._owns_nc = nc is None
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._sleep = sleep
        self._subjects = config.nats.subjects
        self._channels: dict[str, Channel] = {}
        self._http: aiohttp.ClientSession | None = None
        self._js: JetStreamContext | None = None
        self._state: NotifyState | None = None
        self._silences: Mirror[Silence] | None = None
        self._dispatcher: Dispatcher | None = None
        self.scheduler: Scheduler | None = None
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._advisories: list[Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        # id(msg) → (msg, when JetStream last heard of it): the events being worked on
        self._working: dict[int, tuple[Msg, float]] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        # fingerprint → (lock, users): events of one alert are handled in stream order
        self._order: dict[str, tuple[asyncio.Lock, int]] = {}
        self._metrics_server: asyncio.Server | None = None

        self.registry = Registry("signalfire_notifier")
        self.alerts_received = self.registry.counter(
            "alerts_received", "Alert events received, by status", ["status"]
        )
        self.actions_received = self.registry.counter(
            "actions_received", "Alert actions received, by action", ["action"]
        )
        self.rejected = self.registry.counter(
            "rejected_messages",
            "Messages on the alerts or actions subjects that were not valid payloads",
            ["reason"],
        )
        self.bad_state = self.registry.counter(
            "bad_state_entries",
            "KV entries (silences, tracks, batches) that could not be read",
            ["bucket"],
        )
        self.unrouted = self.registry.counter("alerts_unrouted", "Alert events no route matched")
        self.suppressed = self.registry.counter(
            "suppressed", "Notifications not sent because of a silence or an inhibition", ["why"]
        )
        self.errors = self.registry.counter(
            "processing_errors", "Alert events or actions left for redelivery after a NATS error"
        )
        self.bus_errors = self.registry.counter(
            "bus_errors", "NATS errors while fetching (retried with back-off)", ["consumer"]
        )
        self.busy_waits = self.registry.counter(
            "busy_waits", "Times an event waited for a message another replica (or a dead one) claimed"
        )
        self.reloads = self.registry.counter(
            "reloads", "Config reloads (SIGHUP or a changed file), by result", ["result"]
        )
        self.given_up = self.registry.counter(
            "events_given_up",
            "Alert events or actions JetStream stopped redelivering (max_deliver reached)",
            ["consumer"],
        )

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None
        return self._dispatcher

    @property
    def state(self) -> NotifyState:
        assert self._state is not None
        return self._state

    async def start(self) -> None:
        quiet_url_loggers()
        self._http = new_session()
        context = ChannelContext(http=self._http, environ=self._environ)
        try:
            # before connecting: a missing secret must stop start-up, not the first delivery
            self._channels = {
                name: build_channel(name, settings, context)
                for name, settings in self.config.channels.items()
            }
            if self._nc is None:
                self._nc = await connect(self.config.nats, "signalfire-notifier")
            js = self._js = self._nc.jetstream()
            await ensure_streams(js, self.config.nats)
            kv = await js.key_value(self._subjects.bucket("notify_state"))
            self._state = NotifyState(kv, lambda key, why: self._bad_entry("notify_state", key, why))
            await self._state.start()
            self._silences = Mirror(
                await js.key_value(self._subjects.bucket("silences")),
                ">",
                lambda data: msgspec.json.decode(data, type=Silence),
                lambda key, why: self._bad_entry("silences", key, why),
            )
            await self._silences.start()
            timings = self.config.timings
            ledger = DeliveryLedger(
                kv,
                f"notifier-{uuid.uuid4().hex[:12]}",
                timings.lease,
                self._clock,
                refresh_every=timings.heartbeat,
            )
            self._dispatcher = Dispatcher(
                channels=self._channels,
                settings=self.config.channels,
                ledger=ledger,
                kv=kv,
                publish=self._publish_result,
                registry=self.registry,
                clock=self._clock,
                sleep=self._sleep,
            )
            self.scheduler = Scheduler(
                self.config, self._state, self._dispatcher, self.suppression, self._clock
            )
            alerts = await self._subscribe(js, DURABLE, self._subjects.all_alerts, "delivers alert events")
            actions = await self._subscribe(
                js, ACTIONS_DURABLE, self._subjects.actions, "follows alert actions"
            )
            self._subs = [alerts, actions]
            for durable in (DURABLE, ACTIONS_DURABLE):
                self._advisories.append(
                    await self._nc.subscribe(
                        max_deliveries_subject(self._subjects.alerts_stream, durable),
                        queue=ADVISORY_QUEUE,
                        cb=self._on_max_deliveries,
                    )
                )
            if self.config.metrics_listen is not None:
                host, port = parse_listen(self.config.metrics_listen)
                self._metrics_server = await serve_metrics(self.registry, host, port)
        except BaseException:
            await self.stop()
            raise
        if not self.config.routes:
            log.warning("no routes configured: alert events are acknowledged without notifying anyone")
        self._loops = [
            asyncio.create_task(self._fetch_loop(alerts, DURABLE, self._accept_alert)),
            asyncio.create_task(self._fetch_loop(actions, ACTIONS_DURABLE, self._accept_action)),
            asyncio.create_task(self.scheduler.run()),
        ]
        if self.config_path is not None:
            self._loops.append(asyncio.create_task(self._watch_file()))
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        log.info(
            "notifier started",
            extra={"stream": self._subjects.alerts_stream, "channels": ",".join(self._channels)},
        )

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        if self._in_flight:
            # Unfinished events are not acked: JetStream redelivers them, the ledger prevents repeats.
            _, pending = await asyncio.wait(self._in_flight, timeout=DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            self._heartbeat_task = None
        if self.scheduler is not None:
            await self.scheduler.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        for advisory in self._advisories:
            with contextlib.suppress(Exception):
                await advisory.unsubscribe()
        self._advisories = []
        if self._state is not None:
            await self._state.stop()
        if self._silences is not None:
            await self._silences.stop()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._owns_nc and self._nc is not None:
            await self._nc.close()
            self._nc = None

    async def reload(self, config: NotifyConfig) -> None:
        """Use a new config (``SIGHUP``, a changed file): routes, inhibit rules, timing and
        channels. The new channels are built first; when one cannot be (a missing secret),
        :class:`ConfigError` is raised and nothing changes. Deliveries under way finish on the
        channels they started with. Settings of the process itself (``nats``, ``ack_wait``,
        ``claim_lease``, ``max_deliver``, ``max_in_flight``, ``first_start_backlog``,
        ``metrics_listen``, logging) take effect at the next restart."""
        problems = config.problems()
        if problems:
            field, reason = problems[0]
            raise ConfigError(reason, field=field)
        channels = self._channels
        if self._http is not None:
            context = ChannelContext(http=self._http, environ=self._environ)
            # every channel anew: a secret file may have been rotated
            channels = {
                name: build_channel(name, settings, context) for name, settings in config.channels.items()
            }
        kept = [name for name in RESTART_SETTINGS if getattr(config, name) != getattr(self.config, name)]
        if kept:
            log.warning("these settings take effect at the next restart", extra={"settings": ",".join(kept)})
        self.config = msgspec.structs.replace(
            self.config,
            routes=config.routes,
            inhibit=config.inhibit,
            tick=config.tick,
            channels=config.channels,
            watch_interval=config.watch_interval,
        )
        self._channels = channels
        if self._dispatcher is not None:
            self._dispatcher.reconfigure(channels, config.channels)
        if self.scheduler is not None:
            self.scheduler.config = self.config
        log.info(
            "notifier config reloaded",
            extra={"routes": len(self.config.routes), "channels": ",".join(channels)},
        )

    async def reload_file(self) -> bool:
        """Read :attr:`config_path` again and :meth:`reload` it. A file with a mistake, or a
        channel that cannot be built, is logged (``file:line: field: reason``) and counted,
        and the running config kept. Returns whether the new config is in use."""
        if self.config_path is None:
            return False
        async with self._reload_lock:
            self._file = self._file_signature()
            try:
                await self.reload(load_notify_config(self.config_path, environ=self._environ))
            except ConfigError as exc:
                self.reloads.labels(result="failed").inc()
                log.error(
                    "config not reloaded; the running config is kept",
                    extra={"file": self.config_path, "reason": str(exc)},
                )
                return False
            self.reloads.labels(result="ok").inc()
            return True

    async def reload_on_signal(self) -> None:
        """The ``SIGHUP`` handler for :func:`signalfire.runner.serve`."""
        await self.reload_file()

    def _file_signature(self) -> tuple[int, int] | None:
        if self.config_path is None:
            return None
        try:
            stat = os.stat(self.config_path)
        except OSError:
            return (-1, -1)
        return (stat.st_mtime_ns, stat.st_size)

    async def _watch_file(self) -> None:
        # runs with watch_interval 0 too (looking once a second whether a reload turned it on)
        while True:
            await asyncio.sleep(float(self.config.watch_interval) or 1.0)
            if self.config.watch_interval > 0 and self._file_signature() != self._file:
                await self.reload_file()

    def suppression(self, alert: AlertEvent, now: float) -> str | None:
        """Why ``alert`` must not be sent at ``now`` (a silence, an inhibition), or None."""
        if self._silences is not None:
            found = silence.silenced_by(alert, self._silences.values(), now)
            if found is not None:
                self.suppressed.labels(why="silence").inc()
                return silence.reason(found)
        if self._state is not None and self.config.inhibit:
            source = inhibit.inhibited_by(alert, self._state.firing(), self.config.inhibit)
            if source is not None:
                self.suppressed.labels(why="inhibition").inc()
                return inhibit.reason(source)
        return None

    def _bad_entry(self, bucket: str, key: str, why: str) -> None:
        self.bad_state.labels(bucket=bucket).inc()
        log.warning("ignored an unreadable KV entry", extra={"bucket": bucket, "key": key, "reason": why})

    async def _subscribe(
        self, js: JetStreamContext, durable: str, subject: str, what: str
    ) -> JetStreamContext.PullSubscription:
        stream = self._subjects.alerts_stream
        wanted = ConsumerConfig(
            durable_name=durable,
            description=f"Signalfire notifier: {what}",
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=float(self.config.ack_wait),
            max_deliver=self.config.max_deliver,
            max_ack_pending=max(1000, self.config.max_in_flight * 4),
            # A notifier starting for the first time on an old stream must not page
            # people for last month's alerts; a short backlog covers a concurrent start.
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.now(UTC) - timedelta(seconds=float(self.config.first_start_backlog)),
        )
        return await ensure_durable(
            js, stream, wanted, converge=("ack_wait", "max_deliver", "filter_subject")
        )

    async def _fetch_loop(
        self, sub: JetStreamContext.PullSubscription, name: str, accept: Callable[[Msg], Awaitable[None]]
    ) -> None:
        errors = self.bus_errors.labels(consumer=name)
        fetcher = Fetcher(sub, name, backoff=FETCH_BACKOFF, on_error=lambda _exc: errors.inc())
        while True:
            free = self.config.max_in_flight - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            for msg in await fetcher.fetch(min(free, 100)):
                await accept(msg)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

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
        self._spawn(self._settle(msg, alert.id, alert.fingerprint, lambda: self._handle_alert(alert)))

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
                lambda: self._handle_action(action),
            )
        )

    async def _settle(
        self, msg: Msg, alert_id: str, fingerprint: str, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``work()`` for ``msg`` and ack it; nak it (for redelivery) when it could not finish.

        While another replica holds a claim ``work`` needs (:class:`Busy`), the event waits
        here, kept alive by the heartbeat, and ``work`` runs again when that claim should be
        done or expired: waiting uses none of the event's ``max_deliver`` deliveries, so
        JetStream cannot give up on it before a dead replica's lease runs out.
        """
        key = id(msg)
        timings = self.config.timings
        self._working[key] = (msg, asyncio.get_running_loop().time())
        try:
            try:
                async with self._in_order(fingerprint):
                    while True:
                        try:
                            await work()
                            break
                        except Busy as busy:
                            self.busy_waits.inc()
                            await asyncio.sleep(timings.busy_wait(busy.wait))
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

    async def _handle_alert(self, alert: AlertEvent) -> None:
        indexes = matching(alert, self.config.routes)
        if not indexes:
            self.unrouted.inc()
            log.info("no route matched", extra={"alert_id": alert.id, "rule": alert.rule, "host": alert.host})
            return
        handle = self._firing if alert.status == "firing" else self._resolved
        if len(indexes) == 1:
            await handle(alert, indexes[0])
        else:
            await asyncio.gather(*(handle(alert, index) for index in indexes))

    async def _firing(self, alert: AlertEvent, index: int) -> None:
        route = self.config.routes[index]
        state = self.state
        now = self._clock()
        if batched(route):
            key = batch_key(index, group_of(alert, route))
            await state.update_batch(key, lambda b: add(b, alert, index, route, now))
            return
        # Sent first, tracked after: a crash in between leaves the event unacked, and its
        # redelivery finds the sends in the ledger and writes the track then.
        outcomes = await self.dispatcher.send(
            Notification(alert=alert),
            route.channels,
            alert_key(alert.id),
            "firing",
            suppressed=self.suppression(alert, now),
        )
        if any(outcome.status == "superseded" for outcome in outcomes.values()):
            return  # its resolved event came first (a late redelivery): nothing to follow up

        if not self._needs_track(alert, index, outcomes):
            return

        def record(t: Track | None) -> Track:
            if t is None:
                t = Track(alert=alert, route=index, since=now)
            return msgspec.structs.replace(
                t,
                alert=alert,
                channels=merge(t.channels, told(outcomes)),
                references={**t.references, **references(outcomes)},
            )

        await state.update_track(track_key(alert.id, index), record)

    def _needs_track(self, alert: AlertEvent, index: int, outcomes: dict[str, Outcome]) -> bool:
        """Whether a firing alert must be remembered until it resolves: for its escalation
        or repeats, for a reference to thread under, because not every channel was told
        (its resolved notice must go to those that were), or as a possible inhibition
        source. Otherwise the resolved notice simply goes to the route's channels, and one
        KV write per alert is saved (it matters at 1,000 alerts/s)."""
        route = self.config.routes[index]
        if route.escalate or route.repeat is not None or references(outcomes):
            return True
        if sorted(told(outcomes)) != sorted(route.channels):
            return True
        fields = alert_fields(alert)
        return any(matches(matcher_list(rule.source), fields) for rule in self.config.inhibit)

    async def _resolved(self, alert: AlertEvent, index: int) -> None:
        route = self.config.routes[index]
        state = self.state
        now = self._clock()
        if batched(route):
            key = batch_key(index, group_of(alert, route))

            def without(b: Batch | None) -> Batch | None:
                if b is None:
                    return None
                if b.digest and any(a.id == alert.id for a in b.alerts):
                    # the digest lists the period's alerts: this one as fired and resolved
                    return add(b, alert, index, route, now)
                left = remove(b, alert.id)
                return left if left.alerts else None

            await state.update_batch(key, without)
        key = track_key(alert.id, index)
        track = await state.read_track(key)
        known = track.channels if track is not None else []
        refs = track.references if track is not None else {}
        if batched(route):
            # a grouped firing went out as a batch message: the track lists who was told
            channels = known
        else:
            # Told = in the track, or the ledger shows the firing notice (or an escalation
            # step not yet in the track) sent; one still in flight is waited for (Busy).
            unsure = [("firing", name) for name in route.channels if name not in known]
            if track is not None:
                unsure += [
                    (f"esc{track.epoch}-{i}", name)
                    for i, step in enumerate(route.escalate)
                    for name in step.channels
                    if name not in known
                ]
            told = await self.dispatcher.told(alert, alert_key(alert.id), unsure) if unsure else []
            channels = merge(known, told)
        if channels:
            # A silence (or an inhibition) that matches now mutes the resolved notice too, as
            # Alertmanager does: it is reported ``suppressed``, like a muted firing notice.
            await self.dispatcher.send(
                Notification(alert=alert),
                channels,
                alert_key(alert.id),
                "resolved",
                suppressed=self.suppression(alert, now),
                references=refs,
            )
        await state.update_track(key, lambda t: None)

    async def _handle_action(self, action: AlertAction) -> None:
        if action.action == "note":
            return
        state = self.state
        now = self._clock()
        # Read from KV, not the mirror: the track may be another replica's write of a moment ago.
        keys = dict.fromkeys(
            [
                *state.tracks_of(action.alert_id),
                *(track_key(action.alert_id, i) for i in range(len(self.config.routes))),
            ]
        )
        for key in keys:
            old = await state.read_track(key)
            if old is None:
                continue

            def change(t: Track | None) -> Track | None:
                if t is None:
                    return None
                if action.action == "ack" and not t.acknowledged:
                    return msgspec.structs.replace(t, acknowledged=True, acks=t.acks + 1)
                if action.action == "unack" and t.acknowledged:
                    return msgspec.structs.replace(
                        t, acknowledged=False, epoch=t.epoch + 1, since=now, steps_done=0, repeats_done=0
                    )
                if action.action == "resolve" and not t.acknowledged:
                    return msgspec.structs.replace(t, acknowledged=True)
                return t

            track = await state.update_track(key, change)
            if action.action != "ack" or track is None or track.acks == old.acks:
                continue
            channels = [
                name
                for name in track.channels
                if name in self._channels and self._channels[name].acknowledges
            ]
            if channels:
                await self.dispatcher.send(
                    Notification(alert=track.alert, transition="acknowledged"),
                    channels,
                    alert_key(track.alert.id),
                    f"ack{track.acks}",
                )

    async def _publish_result(self, result: DeliveryResult) -> None:
        assert self._js is not None
        await self._js.publish(self._subjects.notifications(result.channel), encode(result))

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
            timings = self.config.timings
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
        if self._dispatcher is None:
            return
        try:
            await self._dispatcher.ledger.refresh_held()
        except Exception as exc:
            log.warning("could not refresh delivery claims", extra={"reason": f"{type(exc).__name__}: {exc}"})

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """JetStream gave up on an alert event (or action): record a dead letter for every
        channel that has not been sent its message, and free claims nobody will finish, so
        the loss is visible rather than silent."""
        try:
            notice = msgspec.json.decode(advisory.data, type=MaxDeliveries)
            assert self._js is not None
            stored = await self._js.get_msg(notice.stream, notice.stream_seq)
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
            await self.dispatcher.give_up(
                alert,
                [
                    name
                    for index in matching(alert, self.config.routes)
                    if not batched(self.config.routes[index])
                    for name in self.config.routes[index].channels
                ],
                alert_key(alert.id),
                max_deliveries(notice.deliveries),
            )
        except Exception as exc:
            log.error(
                "could not record the dead letters of a given-up alert event",
                extra={"alert_id": alert.id, "reason": f"{type(exc).__name__}: {exc}"},
            )
