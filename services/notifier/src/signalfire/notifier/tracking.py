"""What the notifier remembers about one firing alert on one route, between messages.

A :class:`Track` lives in the ``sf_notify_state`` KV bucket under ``track.<alert>.<route>``
from the alert's first message until it resolves, so escalations and repeats survive a
restart and every replica sees them. The decisions about it are pure functions in
:mod:`~signalfire.notifier.escalate` and :mod:`~signalfire.notifier.repeat`.
"""

from __future__ import annotations

import hashlib

import msgspec

from signalfire.events import AlertEvent


class Track(msgspec.Struct, kw_only=True):
    alert: AlertEvent
    route: int
    #: When escalation and repeat times count from: the first message, or the last ``unack``.
    since: float
    acknowledged: bool = False
    #: Bumped by every ``unack``, so escalation steps and repeats may run again.
    epoch: int = 0
    #: Escalation steps already sent in this epoch.
    steps_done: int = 0
    #: Repeats already sent in this epoch.
    repeats_done: int = 0
    #: Acknowledgements announced (to channels that take them), to key each one once.
    acks: int = 0
    #: Channels that were told the alert fires (they get the resolved notice).
    channels: list[str] = []
    #: What each channel returned for its firing message (a Slack ``ts``), by channel.
    references: dict[str, str] = {}


def alert_key(alert_id: str) -> str:
    """KV keys allow only ``[-/_=.a-zA-Z0-9]``; alert ids may hold anything: hash them."""
    return hashlib.sha256(alert_id.encode()).hexdigest()[:32]


def track_key(alert_id: str, route: int) -> str:
    return f"track.{alert_key(alert_id)}.{route}"
