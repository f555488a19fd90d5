"""Answers on the control subjects that more than one service reads (``sf.control.<service>.<verb>``,
core request/reply, nothing stored).

``sf.control.notifier.status``: every notifier replica answers with a :class:`NotifierStatus`,
so the gateway (``GET /api/v1/notifiers``, the Overview's warning) can tell who delivers the
alerts, and that nobody does when none answers."""

from __future__ import annotations

from typing import Literal

import msgspec

#: The verb of ``sf.control.notifier.<verb>`` every notifier replica answers.
NOTIFIER_STATUS = "status"

#: What a notifier's heartbeat to the outside dead man's switch came to: answered 2xx, not
#: answered 2xx, or not sent because JetStream did not answer.
HeartbeatResult = Literal["sent", "failed", "skipped"]


class NotifierStatus(msgspec.Struct, kw_only=True):
    """One notifier replica, as it describes itself."""

    #: The replica's id (``notifier-<12 hex>``, new at every start; its claims in the ledger
    #: carry it).
    replica: str
    #: The machine it runs on.
    hostname: str
    #: When it started (unix seconds).
    started: float
    #: Its channels, name → type (``webhook``, ``email``, …).
    channels: dict[str, str]
    routes: int
    #: Alert events it is working on now.
    in_flight: int
    #: The heartbeat's period in seconds (None: no heartbeat) and its last result.
    heartbeat_every: float | None = None
    heartbeat_last: HeartbeatResult | None = None
    #: Why the last heartbeat was ``skipped`` or ``failed`` (None when it was sent): JetStream
    #: did not answer, the intake is stuck, or the switch's answer (never its URL).
    heartbeat_trouble: str | None = None


def read_statuses(answers: list[bytes]) -> tuple[list[NotifierStatus], int]:
    """The notifier replicas among ``answers`` to ``sf.control.notifier.status``, one per
    replica id, in id order, and how many answers were not a notifier's status (a notifier of
    another version, or something else answering on the subject)."""
    found: dict[str, NotifierStatus] = {}
    unreadable = 0
    for data in answers:
        try:
            status = msgspec.json.decode(data, type=NotifierStatus)
        except msgspec.DecodeError:
            unreadable += 1
            continue
        found[status.replica] = status
    return [found[replica] for replica in sorted(found)], unreadable
