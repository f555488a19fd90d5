"""The notifier service: the shell that wires the parts and owns their resources.

An alert event or action goes through three parts, each a module:

1. the **intake** (:mod:`intake`) fetches it from the durable consumers on JetStream,
   terminates a malformed message, takes the alert's turn (events of one fingerprint in
   stream order), waits out another replica's claim, keeps events and claims alive with one
   heartbeat, acks the event once its outcome is recorded, and turns JetStream's
   max-deliveries advisory into dead letters;
2. the **pipeline** (:mod:`pipeline`) routes the alert (:mod:`routing`), joins it to a batch
   (:mod:`group`) or sends it and **tracks** it (:mod:`tracking`), sends resolved notices to
   the channels that were told, and applies actions (``ack``/``unack``/``resolve``) to the
   tracks;
3. sending (:mod:`dispatch`): **silence** and **inhibition** suppress, the **ledger** claim
   makes it once, **delivery** retries under the channel's **rate limit**, then the
   **fallback** channel, then a **dead-letter** record; every attempt is a DeliveryResult.

The :mod:`scheduler` sends the escalation steps, repeats and batches that come due;
:mod:`reload` takes a new config on ``SIGHUP`` or when the file changes. All state is in
``sf_notify_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from signalfire.bus import connect, ensure_streams
from signalfire.buspolicy import gateway_alerts_consumers
from signalfire.control import NOTIFIER_STATUS, NotifierStatus
from signalfire.events import AlertEvent, DeliveryResult, Silence, encode
from signalfire.notifier import heartbeat, inhibit, silence, watch
from signalfire.notifier.channels import Channel, ChannelContext, build_channel, channel_type
from signalfire.notifier.channels.http import new_session, quiet_url_loggers
from signalfire.notifier.config import NotifyConfig
from signalfire.notifier.dispatch import Dispatcher
from signalfire.notifier.intake import ACTIONS_DURABLE, DURABLE, Intake
from signalfire.notifier.ledger import DeliveryLedger
from signalfire.notifier.mirror import Mirror
from signalfire.notifier.pipeline import Pipeline
from signalfire.notifier.reload import ConfigFile, adopt, check
from signalfire.notifier.scheduler import Scheduler
from signalfire.notifier.state import NotifyState
from signalfire.runner import Essentials
from signalfire.telemetry import Counter, Registry, parse_listen, serve_metrics

__all__ = ["ACTIONS_DURABLE", "DURABLE", "NotifierService"]

log = logging.getLogger("signalfire.notifier")

#: How long (seconds) a notification waits for the silences (and the alerts that may inhibit
#: it) to be checked against their buckets (:meth:`NotifierService.suppressions_current`)
#: before it is decided on the copies held: with NATS away a page is not held back by a check.
SILENCE_CHECK_TIMEOUT = 2.0


#: How long a request of the deciding path (a ledger claim or mark, a track, the silences'
#: check, a delivery result) waits for JetStream before it is retried (BUS_RETRY, in hand).
REQUEST_TIMEOUT = 2.0


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
        check(config)
        self.config = config
        #: The file ``config`` came from: :meth:`reload_file` reads it again, and it is
        #: watched for changes every ``watch_interval``.
        self.config_path = config_path
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
        self._pipeline: Pipeline | None = None
        self._intake: Intake | None = None
        self._watches: list[watch.EvaluationWatch | watch.StorageWatch] = []
        self._heartbeat: heartbeat.Heartbeat | None = None
        #: The loops it cannot run without; one that ends stops the process (signalfire.runner).
        self.essentials = Essentials()
        self.scheduler: Scheduler | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._metrics_server: asyncio.Server | None = None
        self._control: Any = None  # the subscription answering sf.control.notifier.status
        #: This replica's id: its claims in the ledger carry it, and its status answer.
        self.replica = f"notifier-{uuid.uuid4().hex[:12]}"
        self._started = 0.0

        self.registry = Registry("signalfire_notifier")
        self.bad_state = self.registry.counter(
            "bad_state_entries",
            "KV entries (silences, tracks, batches) that could not be read",
            ["bucket"],
        )
        self.suppressed = self.registry.counter(
            "suppressed", "Notifications not sent because of a silence or an inhibition", ["why"]
        )
        self.silence_checks = self.registry.counter(
            "silence_checks",
            "Checks of the silences against their bucket before a decision, by how they ended:"
            " current, caught_up (the watch got there), read (read whole: the watch was behind),"
            " failed (decided on the copy held)",
            ["result"],
        )
        self.inhibition_checks = self.registry.counter(
            "inhibition_checks",
            "Checks of the alerts that may inhibit (every replica's tracks and batches) against "
            "their bucket before a decision, with inhibit rules, by how they ended: as for "
            "silence_checks",
            ["result"],
        )
        self._failing: set[str] = set()  # what is not checked against its bucket now
        self._file = ConfigFile(
            config_path, self._environ, self.reload, lambda: self.config.watch_interval, self.registry
        )

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None
        return self._dispatcher

    @property
    def state(self) -> NotifyState:
        assert self._state is not None
        return self._state

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None
        return self._pipeline

    @property
    def intake(self) -> Intake:
        assert self._intake is not None
        return self._intake

    async def start(self) -> None:
        """Build the channels (a missing secret stops start-up before anything connects),
        connect, bind the consumers and start the intake, the timers and the file watch.
        When a step fails, what was started is stopped and the error raised."""
        quiet_url_loggers()
        self._started = self._clock()
        self._http = new_session()
        try:
            # before connecting: a missing secret must stop start-up, not the first delivery
            self._channels = self._build_channels(self.config)
            beat = heartbeat.target(self.config.heartbeat, self._environ)
            if self._nc is None:
                self._nc = await connect(self.config.nats, "signalfire-notifier")
            js = self._nc.jetstream()
            await ensure_streams(js, self.config.nats)
            # The deciding path (claims, marks, tracks, results) asks with a shorter wait than
            # nats-py's 5 s: while a bucket elects a leader after a NATS node died nobody
            # answers, and each 5 s wait pushed the retry that the new leader answers back.
            fast = self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
            kv = await fast.key_value(self._subjects.bucket("notify_state"))
            self._state = NotifyState(
                kv,
                lambda key, why: self._bad_entry("notify_state", key, why),
                lambda result: self.inhibition_checks.labels(result=result).inc(),
            )
            await self._state.start()
            self.essentials.watch(*self._state.tracks.tasks, *self._state.batches.tasks)
            self._silences = Mirror(
                await fast.key_value(self._subjects.bucket("silences")),
                ">",
                lambda data: msgspec.json.decode(data, type=Silence),
                lambda key, why: self._bad_entry("silences", key, why),
                lambda result: self.silence_checks.labels(result=result).inc(),
            )
            await self._silences.start()
            self.essentials.watch(*self._silences.tasks)
            timings = self.config.timings
            ledger = DeliveryLedger(
                kv,
                self.replica,
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
                self.config,
                self._state,
                self._dispatcher,
                self.suppression,
                self._clock,
                suppressions_current=self.suppressions_current,
            )
            self._pipeline = Pipeline(
                self.config,
                self._state,
                self._dispatcher,
                suppression=self.suppression,
                suppressions_current=self.suppressions_current,
                clock=self._clock,
                registry=self.registry,
            )
            publish_own = watch.publisher(js, self._subjects.alerts(watch.HOST))
            checks = watch.checks_counter(self.registry)
            self._watches = [
                watch.EvaluationWatch(
                    await js.key_value(self._subjects.bucket("evaluator_leases")),
                    watch.evaluation_alert(kv, publish_own, self._clock),
                    lambda: float(self.config.evaluation_watch),
                    registry=self.registry,
                    checks=checks,
                ),
                watch.StorageWatch(
                    js,
                    self._subjects.metrics_stream,
                    gateway_alerts_consumers(self._subjects),
                    watch.storage_alert(kv, publish_own, self._clock),
                    lambda: float(self.config.storage_watch),
                    registry=self.registry,
                    checks=checks,
                ),
            ]
            self._intake = Intake(self.config, js, self._pipeline, ledger, self.registry)
            await self._intake.subscribe(self._nc)
            alerts_stream = self._subjects.alerts_stream
            self._heartbeat = heartbeat.Heartbeat(
                beat,
                lambda: js.consumer_info(alerts_stream, DURABLE),
                self._intake.idle_seconds,
                http=self._http,
                registry=self.registry,
                monotonic=time.monotonic,
            )
            self._control = await self._nc.subscribe(
                self._subjects.control("notifier", NOTIFIER_STATUS), cb=self._on_status_request
            )
            if self.config.metrics_listen is not None:
                host, port = parse_listen(self.config.metrics_listen)
                self._metrics_server = await serve_metrics(self.registry, host, port)
        except BaseException:
            await self.stop()
            raise
        if not self.config.routes:
            log.warning("no routes configured: alert events are acknowledged without notifying anyone")
        self._intake.run()
        self.essentials.watch(*self._intake.tasks)
        spawn = self.essentials.spawn
        self._loops = [spawn(self.scheduler.run(), "notifier-scheduler")]
        self._loops += [spawn(each.run(), f"notifier-{type(each).__name__}") for each in self._watches]
        self._loops.append(spawn(self._heartbeat.run(), "notifier-heartbeat"))
        if self.config_path is not None:
            self._loops.append(spawn(self._file.watch(), "notifier-config-watch"))
        log.info(
            "notifier started",
            extra={"stream": self._subjects.alerts_stream, "channels": ",".join(self._channels)},
        )

    async def stop(self) -> None:
        """Stop taking events and let those in hand finish (up to
        :data:`~signalfire.notifier.intake.DRAIN_TIMEOUT`; the rest are redelivered and the
        ledger prevents repeats), then stop the timers and close what the service owns."""
        self.essentials.stop()
        for each in self._watches:
            each.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.unsubscribe()
            self._control = None
        if self._intake is not None:
            await self._intake.drain()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self._intake is not None:
            await self._intake.close()
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
        """Use a new config (``SIGHUP``, a changed file): routes, inhibit rules, timing,
        channels, the watches and the heartbeat. The new channels and the heartbeat's URL are
        read first; when one cannot be (a missing secret),
        :class:`ConfigError` is raised and nothing changes. Deliveries under way finish on the
        channels they started with. Settings of the process itself (``nats``, ``ack_wait``,
        ``claim_lease``, ``max_deliver``, ``max_in_flight``, ``first_start_backlog``,
        ``metrics_listen``, logging) take effect at the next restart."""
        check(config)
        channels = self._channels
        if self._http is not None:
            # every channel anew: a secret file may have been rotated
            channels = self._build_channels(config)
        beat = heartbeat.target(config.heartbeat, self._environ)
        self.config = adopt(self.config, config)
        self._channels = channels
        if self._dispatcher is not None:
            self._dispatcher.reconfigure(channels, config.channels)
        if self.scheduler is not None:
            self.scheduler.config = self.config
        if self._pipeline is not None:
            self._pipeline.config = self.config
        if self._heartbeat is not None:
            self._heartbeat.target = beat
        log.info(
            "notifier config reloaded",
            extra={"routes": len(self.config.routes), "channels": ",".join(channels)},
        )

    async def reload_file(self) -> bool:
        """Read :attr:`config_path` again and :meth:`reload` it. A file with a mistake, or a
        channel that cannot be built, is logged (``file:line: field: reason``) and counted,
        and the running config kept. Returns whether the new config is in use."""
        return await self._file.reload()

    async def reload_on_signal(self) -> None:
        """The ``SIGHUP`` handler for :func:`signalfire.runner.serve`."""
        await self.reload_file()

    async def suppressions_current(self) -> None:
        """Bring what may suppress a notification up to every write made before now, before a
        decision that consults it (:meth:`Mirror.current`): the silences, so that a silence
        created a moment before an alert fires mutes it, also while the watch is seconds
        behind after a NATS node died; and, with inhibit rules, the tracks and batches of
        every replica, where an alert that may inhibit others is written as soon as it is
        taken (before its own notice is sent). When that cannot be done within
        :data:`SILENCE_CHECK_TIMEOUT` (NATS away), the decision is taken on the copies held:
        counted, and a warning when it starts failing."""
        checks = []
        if self._silences is not None:
            checks.append(self._current("silences", [self._silences], self.silence_checks))
        if self.config.inhibit and self._state is not None:
            mirrors: list[Mirror[Any]] = [self._state.tracks, self._state.batches]
            checks.append(self._current("inhibiting alerts", mirrors, self.inhibition_checks))
        await asyncio.gather(*checks)

    async def _current(self, what: str, mirrors: list[Mirror[Any]], checks: Counter) -> None:
        try:
            async with asyncio.timeout(SILENCE_CHECK_TIMEOUT):
                await asyncio.gather(*(mirror.current() for mirror in mirrors))
        except Exception as exc:
            checks.labels(result="failed").inc()
            if what not in self._failing:
                self._failing.add(what)
                log.warning(
                    f"{what} not checked against their bucket; deciding on the copy held",
                    extra={"reason": f"{type(exc).__name__}: {exc}"},
                )
            return
        if what in self._failing:
            self._failing.discard(what)
            log.info(f"{what} checked against their bucket again")

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

    def status(self) -> NotifierStatus:
        """This replica as it answers ``sf.control.notifier.status``."""
        beat = self._heartbeat
        target = beat.target if beat is not None else None
        return NotifierStatus(
            replica=self.replica,
            hostname=socket.gethostname(),
            started=self._started,
            channels={name: channel_type(settings) for name, settings in self.config.channels.items()},
            routes=len(self.config.routes),
            in_flight=self._intake.in_flight if self._intake is not None else 0,
            heartbeat_every=target.every if target is not None else None,
            heartbeat_last=beat.last if beat is not None and target is not None else None,
            heartbeat_trouble=beat.trouble if beat is not None and target is not None else None,
        )

    async def _on_status_request(self, msg: Any) -> None:
        if msg.reply:
            await msg.respond(msgspec.json.encode(self.status()))

    def _build_channels(self, config: NotifyConfig) -> dict[str, Channel]:
        assert self._http is not None
        context = ChannelContext(http=self._http, environ=self._environ)
        return {name: build_channel(name, settings, context) for name, settings in config.channels.items()}

    def _bad_entry(self, bucket: str, key: str, why: str) -> None:
        self.bad_state.labels(bucket=bucket).inc()
        log.warning("ignored an unreadable KV entry", extra={"bucket": bucket, "key": key, "reason": why})

    async def _publish_result(self, result: DeliveryResult, msg_id: str | None = None) -> None:
        assert self._js is not None
        headers = None if msg_id is None else {"Nats-Msg-Id": msg_id}
        await self._js.publish(self._subjects.notifications(result.channel), encode(result), headers=headers)
