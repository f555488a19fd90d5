"""Who may do what on the bus: the one table of NATS permissions, rendered as server config.

Every identity that connects to NATS has a role (``admin``, ``gateway``, ``evaluator``,
``notifier`` or ``agent``) and, for an agent, the host it speaks for. :func:`permissions`
says what each may publish and subscribe to for one subject prefix; :func:`render` turns a
list of :class:`User` into the ``accounts`` block of a ``nats-server`` config (one account,
``SIGNALFIRE``, with JetStream). ``deploy/nats/accounts.conf``, ``make up`` and
``signalfire bus enroll`` all write what this module renders.

The JetStream API rights name streams, consumers and KV buckets one by one: a service may
look up and create the streams and buckets (``ensure_streams`` runs at every start), bind
and fetch from its own durable consumers and acknowledge their messages, and read and write
the buckets it owns. Every consumer of the metrics stream is the gateway's (one per share of
the hosts when it runs ingest workers, named by their number): it may make, list and remove
any there, a read position (no message goes with it); no other service makes one there.
Deleting or purging a stream, another consumer or a bucket, and deleting a message, is left
to the ``admin`` identity alone; so is publishing anything else. Alert
actions (``<prefix>.actions.alerts``) may be published by the gateway alone, which audits
each one with the API token that asked for it. The committed frames
(``<prefix>.committed.>``, gateway/committed.py) are the gateway's own: only the gateway
may publish or read them (not even ``admin``), so nobody can forge what a dashboard shows live.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from signalfire.control import NOTIFIER_STATUS
from signalfire.subjects import SELF_HOST, Subjects, subject_token

ROLES = ("admin", "gateway", "evaluator", "notifier", "agent")
#: The identities a deployment always has (agents are added per host).
SERVICE_ROLES = ("admin", "gateway", "evaluator", "notifier")
#: The account every Signalfire identity belongs to.
ACCOUNT = "SIGNALFIRE"

#: Durable consumers, by the service that owns them. They are named here and in the
#: services (``gateway/ingest.py``, ``notifier/service.py``); a test keeps them equal. The
#: metrics stream's are :func:`metrics_consumer`'s: ``gateway-metrics``, or one per share of
#: the hosts when the gateways run ingest workers.
GATEWAY_DURABLES = {
    "metrics": ("gateway-metrics",),
    "alerts": ("gateway-alerts", "gateway-actions", "gateway-notifications"),
}
NOTIFIER_DURABLES = ("notifier", "notifier-actions")

_METRICS_DURABLE = GATEWAY_DURABLES["metrics"][0]
_METRICS_SHARE = re.compile(rf"^{_METRICS_DURABLE}-([1-9][0-9]*)of([1-9][0-9]*)$")


def metrics_consumer(share: int = 1, shares: int = 1) -> str:
    """The durable consumer of the metrics stream that takes share ``share`` (1-based) of the
    hosts among ``shares``: ``gateway-metrics`` for all of them, else ``gateway-metrics-<k>of<n>``
    (docs/scaling.md, "Gateway ingest workers")."""
    if not 1 <= share <= shares:
        raise ValueError(f"share {share} of {shares}: a share is 1 to the number of shares")
    return _METRICS_DURABLE if shares == 1 else f"{_METRICS_DURABLE}-{share}of{shares}"


def metrics_consumer_share(name: str) -> tuple[int, int] | None:
    """(share, shares) of a metrics consumer's name, ``None`` for a name that is not one."""
    if name == _METRICS_DURABLE:
        return (1, 1)
    match = _METRICS_SHARE.match(name)
    if match is None:
        return None
    share, shares = int(match.group(1)), int(match.group(2))
    return (share, shares) if share <= shares else None


def gateway_alerts_consumers(s: Subjects) -> list[tuple[str, str]]:
    """(stream, durable) of the gateway's durable consumers of the alerts stream (those of the
    metrics stream are named by the share of the hosts they take: :func:`metrics_consumer`)."""
    return [(s.alerts_stream, d) for d in GATEWAY_DURABLES["alerts"]]


#: KV buckets (short names, see ``signalfire.bus.BUCKETS``) each service writes or watches.
WRITES = {
    "gateway": ("silences",),
    "evaluator": ("alert_state", "evaluator_leases"),
    "notifier": ("notify_state",),
}
WATCHES = {
    "gateway": ("silences",),
    "evaluator": ("alert_state", "evaluator_leases"),
    # the notifier reads the evaluators' leases to page when no replica judges some hosts
    "notifier": ("notify_state", "silences", "evaluator_leases"),
}
ALL_BUCKETS = ("alert_state", "notify_state", "silences", "evaluator_leases")


@dataclass(frozen=True)
class Permissions:
    """What one identity may publish and subscribe to (NATS subjects, wildcards allowed)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    #: May answer requests sent to it (core request/reply on control subjects).
    allow_responses: bool = False


@dataclass(frozen=True)
class User:
    """One identity in the server config. ``password`` is what the config holds: a bcrypt hash
    (written quoted) or, with ``from_env``, the name of a variable nats-server expands."""

    name: str
    role: str
    password: str
    host: str | None = None
    from_env: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown bus role {self.role!r}; one of {', '.join(ROLES)}")
        if (self.role == "agent") != (self.host is not None):
            raise ValueError("an agent identity needs its host, and only an agent has one")


def user_name(role: str, host: str | None = None) -> str:
    """The NATS user name of a role: the role itself, or ``agent-<host token>`` for an agent."""
    return f"agent-{subject_token(host)}" if role == "agent" and host is not None else role


def inbox_prefix(user: str) -> str:
    """Where ``user`` receives replies: its own inbox subtree, which nobody else may read."""
    return f"_INBOX.{subject_token(user)}"


def _stream(name: str, *, update: bool) -> list[str]:
    rights = [f"$JS.API.STREAM.INFO.{name}", f"$JS.API.STREAM.CREATE.{name}"]
    return [*rights, f"$JS.API.STREAM.UPDATE.{name}"] if update else rights


def _durable(stream: str, durable: str) -> list[str]:
    """Create (or converge), bind, fetch from and acknowledge one durable pull consumer."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _bucket_read(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
    ]


def _ordered_consumer(stream: str) -> list[str]:
    """Create, look up and flow-control an ephemeral ordered push consumer of ``stream``."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _bucket_watch(bucket: str) -> list[str]:
    """A KV watcher is an ephemeral ordered push consumer with flow control."""
    return _ordered_consumer(f"KV_{bucket}")


def _service_common(s: Subjects, role: str) -> list[str]:
    rights = ["$JS.API.INFO"]
    # ensure_streams: every service looks up and creates the streams and buckets; only the
    # gateway, which owns the metrics buffer's retention, may change a stream's settings.
    for stream in (s.metrics_stream, s.alerts_stream):
        rights += _stream(stream, update=role == "gateway")
    for short in ALL_BUCKETS:
        rights += _stream(f"KV_{s.bucket(short)}", update=False)
    for short in WRITES[role]:
        rights += [f"$KV.{s.bucket(short)}.>", *_bucket_read(s.bucket(short))]
    for short in WATCHES[role]:
        # a watcher whose watch is behind reads the bucket itself (the notifier's silences)
        rights += [*_bucket_watch(s.bucket(short)), *_bucket_read(s.bucket(short))]
    return list(dict.fromkeys(rights))


def permissions(role: str, subjects: Subjects, host: str | None = None) -> Permissions:
    """What ``role`` (for an agent: the agent of ``host``) may do under ``subjects.prefix``."""
    s = subjects
    p = s.prefix
    if role == "admin":
        # Everything, stream deletion and purges included, except forging an alert action or
        # touching the gateway's committed frames.
        return Permissions(
            publish=(">",),
            subscribe=(">",),
            publish_deny=(s.actions, s.all_committed),
            subscribe_deny=(s.all_committed,),
        )
    if role == "agent":
        if host is None:
            raise ValueError("an agent's permissions need its host")
        return Permissions(
            publish=(s.metrics(host), s.events(host), s.agents(host)),
            subscribe=(f"{inbox_prefix(user_name('agent', host))}.>",),
        )
    if role == "gateway":
        # Every consumer of the metrics stream is the gateway's (named by the share of the
        # hosts it takes, which the number of ingest workers sets): it lists them, and removes
        # those of a number no gateway runs any more. No other service makes one there.
        consumers = [
            *_durable(s.metrics_stream, "*"),
            f"$JS.API.CONSUMER.LIST.{s.metrics_stream}",
            f"$JS.API.CONSUMER.DELETE.{s.metrics_stream}.*",
            *(right for stream, name in gateway_alerts_consumers(s) for right in _durable(stream, name)),
        ]
        return Permissions(
            # HTTP ingest publishes any host's batches; the API publishes actions and asks
            # the services over their control subjects; ingest tells every API process what it
            # committed, and they read it.
            publish=(
                f"{p}.metrics.*",
                f"{p}.events.*",
                s.actions,
                f"{p}.control.>",
                s.all_committed,
                *_service_common(s, role),
                *consumers,
            ),
            subscribe=(f"{inbox_prefix('gateway')}.>", s.all_committed),
        )
    if role == "evaluator":
        return Permissions(
            # events: the evaluator reports a rule's series limit as an event of its own host;
            # at start it reads each watched host's last batch (when an `absent` series was
            # last seen) from the metrics stream, and a replica taking a partition over (or
            # back from a reconnect) reads its recent history with direct gets, which make no
            # consumer: a right to make one on the stream would also let it change the
            # gateway's durables there (a create with their name updates them); after a start,
            # a takeover or a reconnect it reads people's actions on its firing alerts back
            # from the alerts stream's leader, one message at a time; a starting replica asks
            # whether a running one answers for the replica id it wants
            publish=(
                f"{p}.alerts.*",
                f"{p}.events.*",
                f"{p}.control.evaluator.replica.*",
                *_service_common(s, role),
                f"$JS.API.STREAM.MSG.GET.{s.metrics_stream}",
                f"$JS.API.DIRECT.GET.{s.metrics_stream}",
                f"$JS.API.STREAM.MSG.GET.{s.alerts_stream}",
            ),
            subscribe=(
                s.all_metrics,
                s.all_events,
                s.all_agents,
                s.actions,
                f"{p}.control.evaluator.>",
                f"{inbox_prefix('evaluator')}.>",
            ),
            allow_responses=True,
        )
    if role == "notifier":
        consumers = [d for name in NOTIFIER_DURABLES for d in _durable(s.alerts_stream, name)]
        return Permissions(
            publish=(
                f"{p}.notifications.*",
                # its own alerts when no evaluator judges some hosts or nothing is stored
                # (signalfire.notifier.watch): on this one subject, so it cannot forge another
                # host's; it reads how far the gateway's consumers are, and cannot change them
                s.alerts(SELF_HOST),
                f"$JS.API.CONSUMER.LIST.{s.metrics_stream}",
                *(f"$JS.API.CONSUMER.INFO.{stream}.{name}" for stream, name in gateway_alerts_consumers(s)),
                # `signalfire notify status` run with the notifier's own credentials asks the others
                s.control("notifier", NOTIFIER_STATUS),
                *_service_common(s, role),
                *consumers,
                # an alert event whose deliveries ran out is read again by its sequence
                f"$JS.API.STREAM.MSG.GET.{s.alerts_stream}",
                f"$JS.API.DIRECT.GET.{s.alerts_stream}",
                f"$JS.API.DIRECT.GET.{s.alerts_stream}.>",
            ),
            subscribe=(
                f"{p}.control.notifier.>",
                f"{inbox_prefix('notifier')}.>",
                *(
                    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s.alerts_stream}.{d}"
                    for d in NOTIFIER_DURABLES
                ),
            ),
            allow_responses=True,
        )
    raise ValueError(f"unknown bus role {role!r}; one of {', '.join(ROLES)}")


def _strings(values: Iterable[str]) -> str:
    """A config array, one subject a line (the generated file is read in reviews)."""
    items = [json.dumps(v) for v in values]
    if len(items) <= 1:
        return "[" + ", ".join(items) + "]"
    return "[\n" + "".join(f"            {item}\n" for item in items) + "          ]"


def _render_user(user: User, subjects: Subjects) -> list[str]:
    perms = permissions(user.role, subjects, user.host)
    password = f"${user.password}" if user.from_env else json.dumps(user.password)
    publish = f"allow: {_strings(perms.publish)}"
    if perms.publish_deny:
        publish += f", deny: {_strings(perms.publish_deny)}"
    subscribe = f"allow: {_strings(perms.subscribe)}"
    if perms.subscribe_deny:
        subscribe += f", deny: {_strings(perms.subscribe_deny)}"
    lines = [
        f"      {{ user: {json.dumps(user.name)}, password: {password}",
        "        permissions: {",
        f"          publish: {{ {publish} }}",
        f"          subscribe: {{ {subscribe} }}",
    ]
    if perms.allow_responses:
        lines.append("          allow_responses: true")
    return [*lines, "        } }"]


def render(subjects: Subjects, users: Iterable[User]) -> str:
    """The ``accounts`` block of a nats-server config holding ``users`` (sorted by name)."""
    body: list[str] = []
    for user in sorted(users, key=lambda u: u.name):
        body += _render_user(user, subjects)
    return "\n".join(
        [
            f"# Generated by signalfire.buspolicy for subject prefix {subjects.prefix!r}: do not edit.",
            "# Regenerate with `signalfire bus` (docs/security.md).",
            "accounts {",
            f"  {ACCOUNT} {{",
            "    jetstream: enabled",
            "    users: [",
            *body,
            "    ]",
            "  }",
            "}",
            "",
        ]
    )
