"""The notifier service: alert events from JetStream → routes → channels → delivery results.

Pipeline for each alert event (one task per event, events of one fingerprint in order):

1. decode the :class:`AlertEvent` (a malformed message is counted, logged and terminated);
2. :func:`~signalfire.notifier.routing.route` it to channel names;
3. per channel, skip it if the :class:`DeliveryLedger` says it was already sent, otherwise
   :func:`~signalfire.notifier.delivery.deliver` with retries, publishing a
   :class:`DeliveryResult` for every attempt and marking the ledger after a success;
4. ack the event once every channel's outcome is recorded.

Replicas share the durable consumer ``notifier``, so each event goes to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from signalfire.bus import connect, ensure_streams
from signalfire.config import ConfigError
from signalfire.events import AlertEvent, DeliveryResult, PayloadError, decode, encode
from signalfire.notifier.channels import Channel, ChannelContext, Notification, build_channel
from signalfire.notifier.config import NotifyConfig
from signalfire.notifier.delivery import RetryPolicy, deliver
from signalfire.notifier.ledger import DeliveryLedger
from signalfire.notifier.routing import route
from signalfire.telemetry import Registry, parse_listen, serve_metrics

log = logging.getLogger("signalfire.notifier")

#: The durable consumer every notifier replica binds to.
DURABLE = "notifier"
#: How long :meth:`NotifierService.stop` lets in-flight deliveries finish.
DRAIN_TIMEOUT = 10.0


class NotifierService:
    """Delivers alert events to people. ``nc`` may be passed in (tests); else it is created
    in :meth:`start` from ``config.nats`` and closed in :meth:`stop`."""

    def __init__(
        self, config: NotifyConfig, nc: NATS | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        problems = config.problems()
        if problems:
            field, reason = problems[0]
            raise ConfigError(reason, field=field)
        self.config = config
        self._nc = nc
        self._owns_nc = nc is None
        self._environ = os.environ if environ is None else environ
        self._subjects = config.nats.subjects
        self._policies = {name: RetryPolicy.of(settings) for name, settings in config.channels.items()}
        self._channels: dict[str, Channel] = {}
        self._http: httpx.AsyncClient | None = None
        self._js: JetStreamContext | None = None
        self._ledger: DeliveryLedger | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        # fingerprint → (lock, users): events of one alert are handled in stream order
        self._order: dict[str, tuple[asyncio.Lock, int]] = {}
        self._metrics_server: asyncio.Server | None = None

        self.registry = Registry("signalfire_notifier")
        self.alerts_received = self.registry.counter(
            "alerts_received_total", "Alert events received, by status", ["status"]
        )
        self.deliveries = self.registry.counter(
            "deliveries_total",
            "Delivery attempts by channel and outcome (sent/retrying/failed)",
            ["channel", "status"],
        )
        self.duplicates = self.registry.counter(
            "duplicates_skipped_total", "Deliveries skipped because the ledger shows them sent", ["channel"]
        )
        self.rejected = self.registry.counter(
            "rejected_messages_total",
            "Messages on the alerts subjects that were not alert events",
            ["reason"],
        )
        self.unrouted = self.registry.counter("alerts_unrouted_total", "Alert events no route matched")
        self.errors = self.registry.counter(
            "processing_errors_total", "Alert events left for redelivery after a NATS error"
        )

    async def start(self) -> None:
        self._http = httpx.AsyncClient(follow_redirects=False)
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
            self._ledger = DeliveryLedger(await js.key_value(self._subjects.bucket("notify_state")))
            self._sub = await self._subscribe(js)
            if self.config.metrics_listen is not None:
                host, port = parse_listen(self.config.metrics_listen)
                self._metrics_server = await serve_metrics(self.registry, host, port)
        except BaseException:
            await self.stop()
            raise
        if not self.config.routes:
            log.warning("no routes configured: alert events are acknowledged without notifying anyone")
        self._fetcher = asyncio.create_task(self._fetch_loop(self._sub))
        log.info(
            "notifier started",
            extra={"stream": self._subjects.alerts_stream, "channels": ",".join(self._channels)},
        )

    async def stop(self) -> None:
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetcher
            self._fetcher = None
        if self._in_flight:
            # Unfinished events are not acked: JetStream redelivers them, the ledger prevents repeats.
            _, pending = await asyncio.wait(self._in_flight, timeout=DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._owns_nc and self._nc is not None:
            await self._nc.close()
            self._nc = None

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        stream = self._subjects.alerts_stream
        wanted = ConsumerConfig(
            durable_name=DURABLE,
            description="Signalfire notifier: delivers alert events",
            filter_subject=self._subjects.all_alerts,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=float(self.config.ack_wait),
            max_deliver=self.config.max_deliver,
            max_ack_pending=max(1000, self.config.max_in_flight * 4),
            # A notifier starting for the first time on an old stream must not page
            # people for last month's alerts; a short backlog covers a concurrent start.
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.now(UTC) - timedelta(seconds=float(self.config.first_start_backlog)),
        )
        try:
            info = await js.consumer_info(stream, DURABLE)
        except NotFoundError:
            try:
                await js.add_consumer(stream, wanted)
            except Exception:
                # another replica created it first; use theirs
                await js.consumer_info(stream, DURABLE)
        else:
            current = info.config
            if (current.ack_wait, current.max_deliver, current.filter_subject) != (
                wanted.ack_wait,
                wanted.max_deliver,
                wanted.filter_subject,
            ):
                # where the consumer starts is fixed at creation; the rest converges
                await js.add_consumer(
                    stream,
                    dataclasses.replace(
                        current,
                        ack_wait=wanted.ack_wait,
                        max_deliver=wanted.max_deliver,
                        filter_subject=wanted.filter_subject,
                    ),
                )
        return await js.pull_subscribe_bind(durable=DURABLE, stream=stream)

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            free = self.config.max_in_flight - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await sub.fetch(batch=min(free, 100), timeout=1.0)
            except NatsTimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetching alert events failed; retrying", extra={"reason": str(exc)})
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                await self._accept(msg)

    async def _accept(self, msg: Msg) -> None:
        try:
            alert = decode(msg.data, AlertEvent)
        except PayloadError as exc:
            self.rejected.inc(reason="malformed")
            log.warning("rejected malformed alert event", extra={"subject": msg.subject, "reason": str(exc)})
            await msg.term()
            return
        self.alerts_received.inc(status=alert.status)
        # Tasks start in creation order, so each takes its fingerprint's lock in stream order.
        task = asyncio.create_task(self._handle(msg, alert))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, msg: Msg, alert: AlertEvent) -> None:
        try:
            async with self._keep_alive(msg), self._in_order(alert.fingerprint):
                names = route(alert, self.config.routes)
                if not names:
                    self.unrouted.inc()
                    log.info(
                        "no route matched",
                        extra={"alert_id": alert.id, "rule": alert.rule, "host": alert.host},
                    )
                await asyncio.gather(*(self._deliver(alert, name) for name in names))
                await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # NATS trouble while recording: leave the event for redelivery; the ledger
            # keeps channels that already succeeded from sending again.
            self.errors.inc()
            log.warning(
                "alert event left for redelivery",
                extra={
                    "subject": msg.subject,
                    "alert_id": alert.id,
                    "reason": f"{type(exc).__name__}: {exc}",
                },
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=5)

    async def _deliver(self, alert: AlertEvent, name: str) -> None:
        assert self._ledger is not None
        ledger = self._ledger
        if await ledger.was_sent(alert, name):
            self.duplicates.inc(channel=name)
            log.info(
                "already sent; not sending again",
                extra={"alert_id": alert.id, "status": alert.status, "channel": name},
            )
            return

        async def record(result: DeliveryResult) -> None:
            self.deliveries.inc(channel=name, status=result.status)
            if result.status == "sent":
                await ledger.mark_sent(alert, name, result.time, result.attempt)
            else:
                log.warning(
                    "delivery attempt failed",
                    extra={
                        "channel": name,
                        "alert_id": alert.id,
                        "attempt": result.attempt,
                        "outcome": result.status,
                        "reason": result.error,
                    },
                )
            await self._publish_result(result)

        await deliver(self._channels[name], Notification(alert=alert), self._policies[name], record)

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

    @contextlib.asynccontextmanager
    async def _keep_alive(self, msg: Msg) -> AsyncIterator[None]:
        """Tell JetStream the event is still being worked on while retries wait."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(float(self.config.ack_wait) / 3)
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
