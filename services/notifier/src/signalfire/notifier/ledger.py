"""The record of what was sent, in the ``sf_notify_state`` KV bucket: exactly one message
per (alert, transition, channel), also with several replicas and after a crash.

Before sending, a replica *claims* the message: ``kv.create(sent.<alert>.<tag>.<channel>)``,
which fails when the key exists, so of two replicas racing for one message exactly one wins.
The claim says ``sending`` until the channel has answered, then ``sent`` (with the channel's
reference, e.g. a Slack ``ts``) or ``failed``. A firing claim may also end ``superseded``:
the alert's resolved event came first and found no firing notice sent (see
:meth:`DeliveryLedger.close`).

The owner keeps its ``sending`` claims fresh (:meth:`DeliveryLedger.refresh_held`, from the
service's heartbeat, every ``ack_wait/3``), so a claim older than the lease belongs
to a replica that died mid-send (kill -9): another replica may take it over, with a
revision-checked update so again only one does. The ledger key is also the message's
idempotency key: a takeover re-sends with the same key as the first attempt.

A write whose answer is lost (a JetStream leader node dies after the bucket stored the write,
before the reply reached us) is settled by the same replica when the event is tried again: a
``sending`` claim of its own that none of its deliveries holds was never sent, and is taken
back; a channel's answer it could not record is recorded then (:meth:`DeliveryLedger.read`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from signalfire.events import AlertEvent

log = logging.getLogger("signalfire.notifier.ledger")

#: What :meth:`DeliveryLedger.claim` found: ``mine`` (go ahead and send), ``done`` (already
#: sent, given up on or superseded: do not send), ``busy`` (another live replica is sending it).
ClaimOutcome = Literal["mine", "done", "busy"]
MarkState = Literal["sending", "sent", "failed", "superseded"]


class SentMark(msgspec.Struct, kw_only=True):
    """The value stored under a ledger key."""

    alert_id: str
    channel: str
    tag: str
    owner: str
    state: MarkState
    time: float
    attempt: int = 0
    reference: str | None = None
    #: The alert of a ``firing`` claim, so that its resolved event can send the firing
    #: notice first when the claim's owner died (see :mod:`signalfire.notifier.dispatch`);
    #: of a ``superseded`` firing mark, the resolved event that superseded it, so that a
    #: firing event coming after it sends the resolved notice (which says when it fired).
    alert: AlertEvent | None = None
    #: The alerts a group or digest message covered: a flush tried again after its message
    #: went out takes only these out of the batch (others joined it since).
    covered: list[str] = []


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`DeliveryLedger.claim`: ``mark`` is ours (``mine``) or what was
    found (``done``, ``busy``); ``wait`` is, for ``busy``, the seconds until the holder's
    lease runs out if it stops refreshing it."""

    outcome: ClaimOutcome
    mark: SentMark | None = None
    wait: float = 0.0


def ledger_key(alert_key: str, tag: str, channel: str) -> str:
    """``sent.<alert>.<tag>.<channel>``: ``alert_key`` is already KV-safe (a hash), ``tag`` is
    ``firing``, ``resolved``, ``esc0-1``, ``rep0-2``, ``ack1`` or ``batch-<due>``, channel
    names are restricted to ``[A-Za-z0-9_-]`` by the config."""
    return f"sent.{alert_key}.{tag}.{channel}"


class DeliveryLedger:
    """Claims and marks in one KV bucket, on behalf of one replica (``owner``). ``lease`` is
    how old another replica's ``sending`` claim must be before it is presumed dead; our own
    are rewritten when ``refresh_every`` old (default: a third of the lease)."""

    def __init__(
        self,
        kv: KeyValue,
        owner: str,
        lease: float,
        clock: Callable[[], float],
        *,
        refresh_every: float | None = None,
    ) -> None:
        self._kv = kv
        self.owner = owner
        self.lease = lease
        self.refresh_every = lease / 3 if refresh_every is None else refresh_every
        self._clock = clock
        # our sending claims: key → (mark, its revision, when we last wrote it)
        self._held: dict[str, tuple[SentMark, int, float]] = {}
        # keys whose claim we are writing now (the write not answered yet)
        self._claiming: set[str] = set()
        # key → the channel's answer we could not record (NATS trouble): recorded on next read
        self._unrecorded: dict[str, SentMark] = {}

    async def claim(
        self,
        key: str,
        alert_id: str,
        channel: str,
        tag: str,
        *,
        alert: AlertEvent | None = None,
        covered: list[str] | None = None,
    ) -> Claim:
        """Claim the message ``key`` for this replica (see the module docstring)."""
        now = self._clock()
        mark = SentMark(
            alert_id=alert_id,
            channel=channel,
            tag=tag,
            owner=self.owner,
            state="sending",
            time=now,
            alert=alert,
            covered=covered or [],
        )
        data = msgspec.json.encode(mark)
        if key in self._claiming:
            return Claim("busy", None, 0.0)  # another delivery of ours is claiming it right now
        self._claiming.add(key)
        try:
            try:
                self._hold(key, mark, await self._kv.create(key, data))
                return Claim("mine", mark)
            except KeyWrongLastSequenceError:
                pass
            found = await self.read(key)
            if found is None:
                return Claim("busy", None, 0.0)  # deleted between our create and get: look again
            current, revision = found
            if current.state != "sending":
                return Claim("done", current)
            # (the key is in ``_claiming`` only for this very claim, checked above)
            if not self._nobody_sending(key, current, claiming=False):
                return Claim("busy", current, max(0.0, self.lease - (now - current.time)))
            try:
                self._hold(key, mark, await self._kv.update(key, data, last=revision))
            except KeyWrongLastSequenceError:
                return Claim("busy", current, 0.0)
        finally:
            self._claiming.discard(key)
        if current.owner == self.owner:
            log.warning("took back a claim of ours whose write went unanswered", extra={"key": key})
        else:
            log.warning(
                "took over a dead replica's claim",
                extra={"key": key, "owner": current.owner, "age": round(now - current.time, 1)},
            )
        return Claim("mine", mark)

    def _hold(self, key: str, mark: SentMark, revision: int) -> None:
        self._held[key] = (mark, revision, mark.time)

    async def refresh_held(self) -> None:
        """Rewrite every ``sending`` claim of ours written ``refresh_every`` ago or more
        (called from the service's heartbeat), so that a live replica's claim never looks
        dead while it waits for a rate limit, a slow provider or a retry. A claim another
        replica took over meanwhile (we stalled past the lease) is dropped and logged."""
        now = self._clock()
        for key, (mark, revision, written) in list(self._held.items()):
            if now - written < self.refresh_every or key not in self._held:
                continue
            fresh = msgspec.structs.replace(mark, time=now)
            try:
                new_revision = await self._kv.update(key, msgspec.json.encode(fresh), last=revision)
            except KeyWrongLastSequenceError:
                if self._held.pop(key, None) is not None:  # not simply finished meanwhile
                    log.warning("lost a claim to another replica while sending", extra={"key": key})
                continue
            if key in self._held:  # not finished while we wrote
                self._held[key] = (fresh, new_revision, now)

    async def finish(
        self, key: str, mark: SentMark, state: Literal["sent", "failed"], attempt: int, reference: str | None
    ) -> None:
        """Record the channel's answer (unconditionally: it is what happened). When the write
        fails, the answer is kept and recorded by the next :meth:`read` of ``key`` (the event,
        tried again, claims the key: it finds the message sent, not a claim to take back)."""
        self._held.pop(key, None)
        done = msgspec.structs.replace(
            mark, state=state, time=self._clock(), attempt=attempt, reference=reference, alert=None
        )
        self._unrecorded[key] = done
        await self._kv.put(key, msgspec.json.encode(done))
        self._unrecorded.pop(key, None)

    async def close(
        self,
        key: str,
        alert_id: str,
        channel: str,
        tag: str,
        state: Literal["failed", "superseded"],
        *,
        last: int | None = None,
        alert: AlertEvent | None = None,
    ) -> bool:
        """Mark a message that must no longer be sent: ``superseded`` (a firing notice whose
        alert resolved before it went out; ``alert`` is then the resolved event, for a firing
        event that comes later) or ``failed`` (its event was given up on). Creates the key,
        or, with ``last``, replaces the revision read. False when another writer got there
        first (read again)."""
        mark = SentMark(
            alert_id=alert_id,
            channel=channel,
            tag=tag,
            owner=self.owner,
            state=state,
            time=self._clock(),
            alert=alert,
        )
        data = msgspec.json.encode(mark)
        try:
            if last is None:
                await self._kv.create(key, data)
            else:
                await self._kv.update(key, data, last=last)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def read(self, key: str) -> tuple[SentMark, int] | None:
        """The stored mark and its revision, or None. A ``sending`` claim of ours whose
        channel answered but whose answer could not be written (:meth:`finish`) is
        recorded first, and that answer returned."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None  # a deleted key (a released claim)
        mark = msgspec.json.decode(entry.value, type=SentMark)
        revision = entry.revision or 0
        done = self._unrecorded.get(key)
        if done is not None and mark.state == "sending" and mark.owner == self.owner:
            revision = await self._kv.update(key, msgspec.json.encode(done), last=revision)
            mark = done
        if mark.state != "sending":
            self._unrecorded.pop(key, None)
        return mark, revision

    async def mark(self, key: str) -> SentMark | None:
        found = await self.read(key)
        return found[0] if found else None

    def abandoned(self, key: str, mark: SentMark) -> bool:
        """Whether ``mark`` (stored under ``key``) is a ``sending`` claim nobody is sending:
        another replica's that it stopped refreshing (it died), or one of ours that none of
        our deliveries holds (the write's answer was lost, so nothing was sent)."""
        return self._nobody_sending(key, mark, claiming=key in self._claiming)

    def _nobody_sending(self, key: str, mark: SentMark, *, claiming: bool) -> bool:
        if mark.state != "sending":
            return False
        if mark.owner != self.owner:
            return self._clock() - mark.time >= self.lease
        return key not in self._held and not claiming
