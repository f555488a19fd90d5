"""Subject and stream names of the bus contract (``docs/contract.md``).

Every subject starts with a configurable prefix (``sf`` by default). A host name becomes a
single subject token by replacing each character outside ``A-Za-z0-9_-`` with ``_``; the
payload always carries the real name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

#: The host of Signalfire's own alerts (the notifier's ``EvaluationStopped``): they go on
#: ``<prefix>.alerts.signalfire``, the one alerts subject the notifier may publish on.
SELF_HOST = "signalfire"
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def subject_token(name: str) -> str:
    """``name`` as one subject-safe token: ``web-1.example.com`` → ``web-1_example_com``."""
    token = _UNSAFE.sub("_", name)
    return token or "_"


@dataclass(frozen=True)
class Subjects:
    """Builds every subject and stream name for one deployment's prefix."""

    prefix: str = "sf"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} must be dot-separated tokens of A-Za-z0-9_-")

    # Subjects ---------------------------------------------------------------
    def metrics(self, host: str) -> str:
        return f"{self.prefix}.metrics.{subject_token(host)}"

    def events(self, host: str) -> str:
        return f"{self.prefix}.events.{subject_token(host)}"

    def agents(self, host: str) -> str:
        return f"{self.prefix}.agents.{subject_token(host)}"

    def alerts(self, host: str) -> str:
        return f"{self.prefix}.alerts.{subject_token(host)}"

    @property
    def actions(self) -> str:
        return f"{self.prefix}.actions.alerts"

    def notifications(self, channel: str) -> str:
        return f"{self.prefix}.notifications.{subject_token(channel)}"

    def control(self, service: str, verb: str) -> str:
        return f"{self.prefix}.control.{service}.{verb}"

    def committed(self, kind: str) -> str:
        """Core subject (no stream) on which the gateway's ingest announces what it committed:
        ``metrics``, ``status``, ``alerts`` or ``actions``; only the gateway may use it."""
        return f"{self.prefix}.committed.{kind}"

    # Wildcards ----------------------------------------------------------------
    @property
    def all_metrics(self) -> str:
        return f"{self.prefix}.metrics.>"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def all_agents(self) -> str:
        return f"{self.prefix}.agents.>"

    @property
    def all_alerts(self) -> str:
        return f"{self.prefix}.alerts.>"

    @property
    def all_notifications(self) -> str:
        return f"{self.prefix}.notifications.>"

    @property
    def all_committed(self) -> str:
        return f"{self.prefix}.committed.>"

    # Streams and buckets --------------------------------------------------------
    @property
    def metrics_stream(self) -> str:
        return f"{self._stream_prefix}_METRICS"

    @property
    def alerts_stream(self) -> str:
        return f"{self._stream_prefix}_ALERTS"

    @property
    def _stream_prefix(self) -> str:
        return subject_token(self.prefix).upper()

    def bucket(self, name: str) -> str:
        """KV bucket ``name`` (``alert_state``, ``notify_state``, ``silences``,
        ``evaluator_leases``) for this prefix."""
        return f"{subject_token(self.prefix).lower()}_{name}"

    def kind_of(self, subject: str) -> str:
        """The payload family of a subject: ``metrics``, ``events``, ``agents``, ``alerts``, …"""
        rest = subject[len(self.prefix) + 1 :] if subject.startswith(self.prefix + ".") else subject
        return rest.split(".", 1)[0]
