"""The timer-driven stages: escalation steps, repeats, group and digest batches coming due.

Every ``tick`` the scheduler asks the pure cores (:mod:`escalate`, :mod:`repeat`,
:mod:`group`) what is due at ``clock()`` given the mirrored state, and sends it. Every
replica runs it; the ledger's claims make each message go out once, and since the state is
in KV a restarted notifier picks up where a killed one stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from signalfire.events import AlertEvent
from signalfire.notifier.channels import Notification
from signalfire.notifier.config import NotifyConfig, Route
from signalfire.notifier.dispatch import Busy, Dispatcher, Outcome
from signalfire.notifier.escalate import due_steps
from signalfire.notifier.group import Batch, due_at
from signalfire.notifier.repeat import due_repeat
from signalfire.notifier.state import NotifyState
from signalfire.notifier.tracking import Track, alert_key, track_key

log = logging.getLogger("signalfire.notifier.scheduler")

Suppression = Callable[[AlertEvent, float], str | None]


def told(outcomes: dict[str, Outcome]) -> list[str]:
    """Channels that now know about the alert (sent now or before)."""
    return [name for name, outcome in outcomes.items() if outcome.status in ("sent", "duplicate")]


def references(outcomes: dict[str, Outcome]) -> dict[str, str]:
    return {name: o.reference for name, o in outcomes.items() if o.reference is not None}


def merge(channels: list[str], more: list[str]) -> list[str]:
    return list(dict.fromkeys([*channels, *more]))


class Scheduler:
    def __init__(
        self,
        config: NotifyConfig,
        state: NotifyState,
        dispatcher: Dispatcher,
        suppression: Suppression,
        clock: Callable[[], float],
        *,
        suppressions_current: Callable[[], Awaitable[None]],
    ) -> None:
        self.config = config
        self._state = state
        self._dispatcher = dispatcher
        self._suppression = suppression
        self._suppressions_current = suppressions_current
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}

    def route(self, index: int) -> Route | None:
        routes = self.config.routes
        return routes[index] if 0 <= index < len(routes) else None

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(float(self.config.tick))

    def tick(self) -> list[asyncio.Task[None]]:
        """Start the work due now (at most one task per track or batch); returns the tasks."""
        now = self._clock()
        started: list[asyncio.Task[None]] = []
        for key, (track, _) in list(self._state.tracks.entries.items()):
            route = self.route(track.route)
            if key in self._running or route is None or (not route.escalate and route.repeat is None):
                continue
            steps = due_steps(track, route, now)
            repeat = due_repeat(track, route, now)
            if steps or repeat is not None:
                started.append(
                    self._start(key, self._timers(key, track, route, steps=steps, repeat=repeat, now=now))
                )
        for key, (batch, _) in list(self._state.batches.entries.items()):
            route = self.route(batch.route)
            if key in self._running or route is None or batch.due > now:
                continue
            started.append(self._start(key, self._flush(key, batch, route, now)))
        return started

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, key: str, work: Awaitable[None]) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await work
            except Busy:
                pass  # another replica is on it; the next tick looks again
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "scheduled notification failed; retrying at the next tick",
                    extra={"key": key, "reason": f"{type(exc).__name__}: {exc}"},
                )
            finally:
                self._running.pop(key, None)

        task = asyncio.create_task(guarded())
        self._running[key] = task
        return task

    async def _timers(
        self, key: str, track: Track, route: Route, *, steps: list[int], repeat: int | None, now: float
    ) -> None:
        # The mirror may lag another replica's write (an ack, a resolve): decide on the stored track.
        fresh = await self._state.read_track(key)
        if fresh is None:
            return
        track = fresh
        steps = due_steps(track, route, now)
        repeat = due_repeat(track, route, now)
        if not steps and repeat is None:
            return
        alert = track.alert
        akey = alert_key(alert.id)
        await self._suppressions_current()
        suppressed = self._suppression(alert, now)
        epoch = track.epoch
        for index in steps:
            step = route.escalate[index]
            outcomes = await self._dispatcher.send(
                Notification(alert=alert, transition="escalation"),
                step.channels,
                akey,
                f"esc{epoch}-{index}",
                suppressed=suppressed,
            )
            done = index + 1

            def stepped(
                t: Track | None, done: int = done, outcomes: dict[str, Outcome] = outcomes
            ) -> Track | None:
                if t is None or t.epoch != epoch:
                    return t
                return msgspec.structs.replace(
                    t,
                    steps_done=max(t.steps_done, done),
                    channels=merge(t.channels, told(outcomes)),
                    references={**references(outcomes), **t.references},
                )

            await self._state.update_track(key, stepped)
        if repeat is not None:
            current = self._state.tracks.entries.get(key)
            latest = current[0] if current else track
            channels = latest.channels or route.channels
            await self._dispatcher.send(
                Notification(alert=alert, transition="repeat"),
                channels,
                akey,
                f"rep{epoch}-{repeat}",
                suppressed=suppressed,
                references=latest.references,
            )

            def repeated(t: Track | None) -> Track | None:
                if t is None or t.epoch != epoch:
                    return t
                return msgspec.structs.replace(t, repeats_done=max(t.repeats_done, repeat))

            await self._state.update_track(key, repeated)

    async def _flush(self, key: str, batch: Batch, route: Route, now: float) -> None:
        """Send the batch as one message per channel, then track its alerts (a group) and
        empty it (alerts that joined meanwhile wait for the next one)."""
        await self._suppressions_current()
        sendable: list[AlertEvent] = []
        for alert in batch.alerts:
            reason = self._suppression(alert, now)
            if reason is None:
                sendable.append(alert)
            else:
                await self._dispatcher.send(
                    Notification(alert=alert),
                    route.channels,
                    alert_key(alert.id),
                    "firing",
                    suppressed=reason,
                )
        group = key.rsplit(".", 1)[-1]
        tag = f"batch-{int(batch.due)}"
        flushed = {alert.id for alert in batch.alerts}
        earlier = await self._dispatcher.covered(group, tag, route.channels)
        if earlier is not None:
            # An earlier try claimed or sent this message and did not empty the batch (NATS
            # away, a kill): every channel gets that same message, only its alerts (and the
            # suppressed) leave the batch, and those that joined since wait for the next one.
            flushed = {a.id for a in batch.alerts if a.id in earlier or a not in sendable}
            sendable = [a for a in sendable if a.id in earlier]
        outcomes: dict[str, Outcome] = {}
        # a digest names its firing alerts first: the message's own alert (and transition)
        # is a firing one unless every alert of the period has resolved already
        sendable.sort(key=lambda a: a.status == "resolved")
        if sendable:
            outcomes = await self._dispatcher.send(
                Notification(alert=sendable[0], alerts=tuple(sendable), digest=batch.digest),
                route.channels,
                group,
                tag,
            )
        if not batch.digest:
            for alert in batch.alerts:
                if alert.id not in flushed:
                    continue

                def start(t: Track | None, alert: AlertEvent = alert) -> Track | None:
                    if t is not None:
                        return t
                    channels = told(outcomes) if alert in sendable else []
                    return Track(alert=alert, route=batch.route, since=now, channels=channels)

                await self._state.update_track(track_key(alert.id, batch.route), start)

        def emptied(b: Batch | None) -> Batch | None:
            if b is None:
                return None
            left = [a for a in b.alerts if a.id not in flushed]
            if not left:
                return None
            return msgspec.structs.replace(b, alerts=left, due=due_at(route, self._clock()))

        await self._state.update_batch(key, emptied)
