"""What one alert event or alert action does to the notifications, once the intake
(:mod:`intake`) has decoded it and holds its fingerprint's turn.

An alert event is **routed** (:mod:`routing`); per matching route a firing alert joins a
**batch** (:mod:`group`) on a ``group_wait``/``digest`` route, otherwise it is sent now and
**tracked** (:mod:`tracking`) when escalation, repeats or its resolved notice need it; a
resolved alert goes to the channels that were told it fired. An action (``ack``,
``unack``, ``resolve``) changes the tracks, and an ``ack`` is passed on to the channels that
take acknowledgements. Sending is :class:`~signalfire.notifier.dispatch.Dispatcher`'s; the
state is :class:`~signalfire.notifier.state.NotifyState`'s. A :class:`Busy` from either
reaches the intake, which runs the event again later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from signalfire.events import AlertAction, AlertEvent
from signalfire.matchers import matches
from signalfire.notifier.channels import Notification
from signalfire.notifier.config import NotifyConfig, matcher_list
from signalfire.notifier.deadletter import RESOLVED_BEFORE_BATCHED, max_deliveries
from signalfire.notifier.dispatch import Dispatcher, Outcome
from signalfire.notifier.group import Batch, add, batch_key, batched, group_of, remove
from signalfire.notifier.routing import alert_fields, matching
from signalfire.notifier.scheduler import Suppression, merge, references, told
from signalfire.notifier.state import NotifyState
from signalfire.notifier.tracking import Track, alert_key, track_key
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.notifier")


class Pipeline:
    """The event-driven stages. ``config`` is replaced by a reload (routes and inhibit rules
    take effect for the next event); ``suppression``, ``suppressions_current`` (awaited before
    the silences and inhibitions are consulted) and ``clock`` are the service's."""

    def __init__(
        self,
        config: NotifyConfig,
        state: NotifyState,
        dispatcher: Dispatcher,
        *,
        suppression: Suppression,
        suppressions_current: Callable[[], Awaitable[None]],
        clock: Callable[[], float],
        registry: Registry,
    ) -> None:
        self.config = config
        self._state = state
        self._dispatcher = dispatcher
        self._suppression = suppression
        self._suppressions_current = suppressions_current
        self._clock = clock
        self.unrouted = registry.counter("alerts_unrouted", "Alert events no route matched")

    async def alert(self, alert: AlertEvent) -> None:
        """Route ``alert`` and notify, batch or track it on every route it matches; returns
        once the outcome is recorded (the intake acks the event then)."""
        indexes = matching(alert, self.config.routes)
        if not indexes:
            self.unrouted.inc()
            log.info("no route matched", extra={"alert_id": alert.id, "rule": alert.rule, "host": alert.host})
            return
        # a silence written before this event was taken mutes it, whatever the watch's delay
        await self._suppressions_current()
        handle = self._firing if alert.status == "firing" else self._resolved
        if len(indexes) == 1:
            await handle(alert, indexes[0])
        else:
            await asyncio.gather(*(handle(alert, index) for index in indexes))

    async def _firing(self, alert: AlertEvent, index: int) -> None:
        route = self.config.routes[index]
        state = self._state
        now = self._clock()
        if batched(route):
            akey = alert_key(alert.id)
            if await self._dispatcher.resolved_first(akey, route.channels):
                # its resolved event came first (a late redelivery): batching it now would
                # send a group message, and repeats, for an alert that has ended
                log.info("firing event after its resolved: not batched", extra={"alert_id": alert.id})
                await self._dispatcher.send(
                    Notification(alert=alert),
                    route.channels,
                    akey,
                    "firing",
                    suppressed=RESOLVED_BEFORE_BATCHED,
                )
                return
            key = batch_key(index, group_of(alert, route))
            await state.update_batch(key, lambda b: add(b, alert, index, route, now))
            return
        key = track_key(alert.id, index)
        source = self._inhibits(alert)
        if source:
            # An alert that inhibits others is tracked as soon as it is taken: a target that
            # arrives while its own notice is being sent (a slow channel, seconds), here or at
            # another replica (which checks the tracks against the bucket), is muted by it.
            await state.update_track(key, lambda t: t or Track(alert=alert, route=index, since=now))
        # Sent first, tracked after: a crash in between leaves the event unacked, and its
        # redelivery finds the sends in the ledger and writes the track then.
        outcomes = await self._dispatcher.send(
            Notification(alert=alert),
            route.channels,
            alert_key(alert.id),
            "firing",
            suppressed=self._suppression(alert, now),
        )
        superseded = [o for o in outcomes.values() if o.status == "superseded"]
        if superseded:
            # Its resolved event came first (a late redelivery): no late page and nothing to
            # follow up, but the channels hear that it fired and resolved, through the
            # resolved notice, once (the ledger's ``resolved`` mark).
            owed = [o for o in superseded if o.resolved is not None]
            if owed:
                resolved = owed[0].resolved
                assert resolved is not None
                await self._dispatcher.send(
                    Notification(alert=resolved),
                    [o.channel for o in owed],
                    alert_key(alert.id),
                    "resolved",
                    suppressed=self._suppression(resolved, now),
                )
            if source:  # it has ended: it inhibits nothing
                await state.update_track(key, lambda t: None)
            return

        if not source and not self._needs_track(alert, index, outcomes):
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

        await state.update_track(key, record)

    def _inhibits(self, alert: AlertEvent) -> bool:
        """Whether ``alert`` is the source of an inhibit rule: it must be tracked while it fires."""
        fields = alert_fields(alert)
        return any(matches(matcher_list(rule.source), fields) for rule in self.config.inhibit)

    def _needs_track(self, alert: AlertEvent, index: int, outcomes: dict[str, Outcome]) -> bool:
        """Whether a firing alert must be remembered until it resolves: for its escalation
        or repeats, for a reference to thread under, or because not every channel was told
        (its resolved notice must go to those that were); an inhibition source is tracked
        anyway. Otherwise the resolved notice simply goes to the route's channels, and one KV
        write per alert is saved (it matters at 1,000 alerts/s)."""
        route = self.config.routes[index]
        if route.escalate or route.repeat is not None or references(outcomes):
            return True
        return sorted(told(outcomes)) != sorted(route.channels)

    async def _resolved(self, alert: AlertEvent, index: int) -> None:
        route = self.config.routes[index]
        state = self._state
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
            # a grouped firing went out as a batch message: the track lists who was told;
            # the firing event redelivered after this one must not join a batch any more
            channels = known
            await self._dispatcher.supersede(alert, alert_key(alert.id), route.channels)
        else:
            # Told = in the track, or the ledger shows the firing notice (or an escalation
            # step not yet in the track) sent; one still in flight is waited for (Busy). A
            # channel a reload removed may have been told under the old routes: it is looked
            # up too, and reported ``suppressed`` when it was.
            removed = [name for name in self._dispatcher.removed if name not in route.channels]
            asked = [*route.channels, *removed]
            unsure = [("firing", name) for name in asked if name not in known]
            if track is not None:
                unsure += [
                    (f"esc{track.epoch}-{i}", name)
                    for i, step in enumerate(route.escalate)
                    for name in step.channels
                    if name not in known
                ]
            told = await self._dispatcher.told(alert, alert_key(alert.id), unsure) if unsure else []
            channels = merge(known, told)
        if channels:
            # A silence (or an inhibition) that matches now mutes the resolved notice too, as
            # Alertmanager does: it is reported ``suppressed``, like a muted firing notice.
            await self._dispatcher.send(
                Notification(alert=alert),
                channels,
                alert_key(alert.id),
                "resolved",
                suppressed=self._suppression(alert, now),
                references=refs,
            )
        await state.update_track(key, lambda t: None)

    async def action(self, action: AlertAction) -> None:
        """Apply ``action`` to the alert's tracks; an ``ack`` that changed one is sent to the
        channels that were told and take acknowledgements (PagerDuty), once per ack."""
        if action.action == "note":
            return
        state = self._state
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
            in_use = self._dispatcher.channels
            channels = [name for name in track.channels if name in in_use and in_use[name].acknowledges]
            if channels:
                await self._dispatcher.send(
                    Notification(alert=track.alert, transition="acknowledged"),
                    channels,
                    alert_key(track.alert.id),
                    f"ack{track.acks}",
                )

    async def give_up(self, alert: AlertEvent, deliveries: int) -> None:
        """JetStream stopped redelivering ``alert`` after ``deliveries``: a dead letter for
        every channel of its unbatched routes that was not sent its message."""
        await self._dispatcher.give_up(
            alert,
            [
                name
                for index in matching(alert, self.config.routes)
                if not batched(self.config.routes[index])
                for name in self.config.routes[index].channels
            ],
            alert_key(alert.id),
            max_deliveries(deliveries),
        )
