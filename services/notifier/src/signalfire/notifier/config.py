"""``notify.yaml``: the notifier's whole configuration (channels, routes, NATS, logging).

:func:`load_notify_config` is the only way in; every error names the file, the line and
the field, e.g. ``notify.yaml:14: routes[1].channels[0]: unknown channel 'pager'``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from signalfire.bus import NatsConfig
from signalfire.config import ConfigError, Duration, convert, line_of, load_config, parse_yaml
from signalfire.matchers import Matcher, MatcherError, equality, parse_matcher, parse_matchers
from signalfire.notifier.channels import ChannelConfig
from signalfire.telemetry import parse_listen

#: Channel names become subject tokens (``sf.notifications.<name>``) and KV key parts.
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

#: What a route or inhibit rule matches: a ``{field: value}`` map or matcher texts.
MatchSpec = dict[str, str] | list[str]


class EscalationStep(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``{after: 5m, channels: [oncall-sms]}``: tell more people if nobody acknowledged."""

    after: Duration
    channels: Annotated[list[str], Meta(min_length=1)]


class Route(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Alerts that every ``matchers`` entry and every ``match`` entry match go to ``channels``.

    ``matchers`` are label matchers in text form (``'severity=~"high|critical"'``, see
    docs/matchers.md); ``match`` is the older ``{field: value}`` map, each entry meaning
    ``field="value"``. Fields are ``severity``, ``rule``, ``host`` or any alert label; a route
    with neither matches every alert. The first matching route wins unless it says
    ``continue: true``. The timing keys are described in ``docs/notifications.md``.
    """

    channels: Annotated[list[str], Meta(min_length=1)]
    match: dict[str, str] = {}
    matchers: list[str] = []
    continue_: bool = msgspec.field(default=False, name="continue")
    #: Hold the first firing alert this long and send one message for all that fired meanwhile.
    group_wait: Duration = Duration(0)
    #: Alert fields (``rule``, ``host``, labels) that split alerts into separate groups.
    group_by: list[str] = []
    #: Instead of a message per alert, one message per channel per period.
    digest: Duration | None = None
    #: Steps run while the alert is firing and not acknowledged, ``after`` counted from the
    #: first message (or from an ``unack``).
    escalate: list[EscalationStep] = []
    #: Remind ``channels`` this often while the alert is firing and not acknowledged.
    repeat: Duration | None = None

    def __post_init__(self) -> None:
        _check_matchers("matchers", self.matchers)
        if self.digest is not None and self.digest < 1:
            raise ValueError("digest: must be at least 1s")
        if self.repeat is not None and self.repeat < 1:
            raise ValueError("repeat: must be at least 1s")
        if self.digest is not None and self.group_wait:
            raise ValueError("digest: a digest route has no group_wait (the period is the wait)")


class InhibitRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """While an alert matching ``source`` fires, alerts matching ``target`` (default: any
    other alert) whose ``equal`` fields have the same values are not sent.

    ``source`` and ``target`` are each a list of label matchers in text form
    (docs/matchers.md) or a ``{field: value}`` map meaning ``field="value"`` for each entry.
    """

    source: MatchSpec
    target: MatchSpec = {}
    equal: list[str] = []

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source: give at least one matcher (an empty source would match every alert)")
        for name in ("source", "target"):
            spec = getattr(self, name)
            if isinstance(spec, list):
                _check_matchers(name, spec)


def matcher_list(spec: MatchSpec, more: Sequence[str] = ()) -> tuple[Matcher, ...]:
    """The matchers of a ``{field: value}`` map or a list of matcher texts, plus ``more``
    (texts). Parsed once per distinct spec: routes and inhibit rules are tested per alert."""
    if isinstance(spec, dict):
        return _parsed(tuple(spec.items()), (), tuple(more))
    return _parsed((), tuple(spec), tuple(more))


@functools.lru_cache(maxsize=1024)
def _parsed(
    equal: tuple[tuple[str, str], ...], texts: tuple[str, ...], more: tuple[str, ...]
) -> tuple[Matcher, ...]:
    return (*equality(dict(equal)), *parse_matchers(texts), *parse_matchers(more))


def _check_matchers(field: str, texts: Sequence[str]) -> None:
    for i, text in enumerate(texts):
        try:
            parse_matcher(text)
        except MatcherError as exc:
            raise ValueError(f"{field}[{i}]: {exc}") from None


class HeartbeatConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``heartbeat:``, a dead man's switch: every ``every``, each notifier replica that gets an
    answer from JetStream requests the URL (a GET) of an outside service that pages when the
    requests stop (healthchecks.io, Dead Man's Snitch, Better Stack, Cronitor). What no
    alert of Signalfire's can say, it says by falling silent: NATS down or cut off, the alerts
    stream without a leader, every notifier down, or a notifier's intake stuck (no fetch of
    alert events answered and no event finished for ``stalled_after``). The URL
    holds the check's secret, so it comes from the variable named by ``url_env`` or the file
    ``url_file``, never the YAML."""

    url_env: str | None = None
    url_file: str | None = None
    every: Duration = Duration(60)
    #: The longest a request (and the JetStream answer before it) may take.
    timeout: Duration = Duration(10)
    #: How long a replica may go without progress (a fetch of alert events answered, an event
    #: finished) before it counts as stuck and sends no heartbeat. Longer than a delivery's
    #: attempts take with the default retry settings (an email: 3 attempts of up to 30 s and
    #: 3 s of back-off) plus a NATS outage waited out in hand (60 s).
    stalled_after: Duration = Duration(180)

    def __post_init__(self) -> None:
        if (self.url_env is None) == (self.url_file is None):
            raise ValueError("url_env: set exactly one of url_env and url_file")
        if self.every <= 0:
            raise ValueError("every: must be more than 0")
        if not 0 < self.timeout <= self.every:
            raise ValueError(f"timeout: must be more than 0 and at most every ({self.every:g}s)")
        if self.stalled_after <= 0:
            raise ValueError("stalled_after: must be more than 0")


class NotifyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The notifier's settings; see ``notify.example.yaml`` and ``docs/notifications.md``."""

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    log_level: str = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"
    channels: dict[str, ChannelConfig] = {}
    routes: list[Route] = []
    inhibit: list[InhibitRule] = []
    #: How often escalations, repeats, groups and digests are checked for being due.
    tick: Duration = Duration(1)
    #: A replica that claimed a message and then vanished (crash, kill -9) is presumed dead
    #: after this long, and another replica sends the message instead. Default: ``ack_wait``
    #: (see :class:`Timings`).
    claim_lease: Duration | None = None
    #: ``host:port`` serving ``/metrics``; off when unset.
    metrics_listen: str | None = None
    #: How long an alert event may stay unacknowledged before JetStream redelivers it
    #: (the notifier extends it while deliveries are still being retried).
    ack_wait: Duration = Duration(30)
    #: Deliveries of one alert event before JetStream gives up on it; each crash of the
    #: notifier working on it uses one (waiting for another replica's claim uses none).
    max_deliver: Annotated[int, Meta(ge=1, le=1000)] = 5
    #: Alert events processed at the same time by one replica.
    max_in_flight: Annotated[int, Meta(ge=1, le=10_000)] = 64
    #: When the durable consumer is first created, alert events this old are still delivered.
    first_start_backlog: Duration = Duration(300)
    #: How often the config file is checked for changes (reloaded when it changed); 0: never
    #: (``SIGHUP`` still reloads).
    watch_interval: Duration = Duration(1)
    #: A host partition judged by no evaluator replica for this long (its lease neither renewed
    #: nor taken over) raises the notifier's own ``EvaluationStopped`` alert; 0: not watched.
    #: Longer than the evaluators' ``failover_after``, which a handover takes at most.
    evaluation_watch: Duration = Duration(60)
    #: A consumer of the gateway's with messages waiting whose acknowledged floor has not moved
    #: for this long (nothing stored: every gateway down, PostgreSQL unreachable or full)
    #: raises the notifier's own ``StorageStalled`` alert; 0: not watched. At least 2 minutes:
    #: the gateway acknowledges a batch once its minute's rollups are merged.
    storage_watch: Duration = Duration(300)
    #: A request to an outside dead man's switch while this replica can reach JetStream;
    #: none when unset (see :class:`HeartbeatConfig`).
    heartbeat: HeartbeatConfig | None = None

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field mistakes as ``(field path, reason)``, e.g. a route naming an unknown channel."""
        found: list[tuple[str, str]] = []
        for name in self.channels:
            if not CHANNEL_NAME.match(name):
                found.append((f"channels.{name}", "a channel name may contain only A-Z a-z 0-9 _ -"))
        known = ", ".join(sorted(self.channels)) or "none"

        def check(field: str, channel: str) -> None:
            if channel not in self.channels:
                found.append((field, f"unknown channel {channel!r} (configured: {known})"))

        for i, route in enumerate(self.routes):
            for j, channel in enumerate(route.channels):
                check(f"routes[{i}].channels[{j}]", channel)
            for k, step in enumerate(route.escalate):
                for j, channel in enumerate(step.channels):
                    check(f"routes[{i}].escalate[{k}].channels[{j}]", channel)
        for name, settings in self.channels.items():
            if settings.fallback is not None:
                if settings.fallback == name:
                    found.append((f"channels.{name}.fallback", "a channel cannot be its own fallback"))
                else:
                    check(f"channels.{name}.fallback", settings.fallback)
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ValueError as exc:
                found.append(("metrics_listen", str(exc)))
        if self.tick <= 0:
            found.append(("tick", "must be more than 0"))
        found.extend(self._timing_problems())
        return found

    def _timing_problems(self) -> list[tuple[str, str]]:
        """``ack_wait``, ``claim_lease`` and ``max_deliver`` must fit together (:class:`Timings`)."""
        if self.ack_wait < 1:
            return [("ack_wait", "must be at least 1s")]
        found: list[tuple[str, str]] = []
        heartbeat = float(self.ack_wait) / 3
        if self.claim_lease is not None and self.claim_lease < 2 * heartbeat:
            found.append(
                (
                    "claim_lease",
                    f"must be at least 2/3 of ack_wait ({2 * heartbeat:g}s): a notifier refreshes its "
                    f"claims every ack_wait/3 ({heartbeat:g}s), and a lease shorter than two refreshes "
                    "lets another replica take over a live notifier's message and send it twice",
                )
            )
        if self.max_deliver < 2:
            found.append(
                (
                    "max_deliver",
                    "must be at least 2: a redelivery is how the alert events of a notifier that "
                    "crashed mid-send are finished (each crash uses one delivery)",
                )
            )
        return found

    @property
    def timings(self) -> Timings:
        """The redelivery and claim timings this config implies."""
        return Timings.of(self)


@dataclass(frozen=True)
class Timings:
    """How redelivery (JetStream) and claims (the ledger) fit together; one heartbeat serves both.

    - ``heartbeat = ack_wait / 3``: every heartbeat, events still being worked on are sent
      ``in_progress`` and our ``sending`` claims older than ``heartbeat`` are rewritten, so
      neither ever looks abandoned while the replica lives.
    - ``lease = claim_lease`` (default ``ack_wait``, at least twice ``heartbeat``): a claim not
      rewritten for this long belongs to a dead replica and may be taken over.
    - after a ``kill -9`` its events are redelivered within ``ack_wait`` of its last heartbeat
      and its claims expire within ``lease`` of it, so every message it held is sent again
      within ``takeover = max(ack_wait, lease) + margin + busy_poll``.
    - an event whose message another replica holds waits *locally* (kept alive by the
      heartbeat), looked at again after ``min(remaining lease + margin, busy_poll)``: waiting
      uses no delivery, so the broker cannot give up before a lease can expire; deliveries
      are used only by crashes and NATS errors (a NATS error naks with ``heartbeat``).
    """

    ack_wait: float
    heartbeat: float
    lease: float
    #: Allowance for the clocks of two replicas disagreeing and for KV write latency.
    margin: float = 0.5
    #: Longest wait before a busy message is looked at again (a live holder is usually done by then).
    busy_poll: float = 1.0

    @classmethod
    def of(cls, config: NotifyConfig) -> Timings:
        ack_wait = float(config.ack_wait)
        lease = float(config.claim_lease) if config.claim_lease is not None else ack_wait
        return cls(ack_wait=ack_wait, heartbeat=ack_wait / 3, lease=lease)

    def busy_wait(self, remaining: float) -> float:
        """Seconds before a busy message is looked at again, ``remaining`` being what is
        left of the holder's lease."""
        return max(0.05, min(max(remaining, 0.0) + self.margin, self.busy_poll))

    @property
    def takeover(self) -> float:
        """Longest time from a replica's ``kill -9`` until its messages are sent again."""
        return max(self.ack_wait, self.lease) + self.margin + self.busy_poll


def load_notify_config(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> NotifyConfig:
    """Read ``notify.yaml`` (optional) plus ``SF_*`` overrides and check it whole.

    Raises :class:`ConfigError` ("file:line: field: reason") for anything wrong.
    """
    try:
        config = load_config(NotifyConfig, path, environ=environ)
    except ConfigError as exc:
        if path is not None and exc.field.startswith("channels[...]"):
            _raise_for_channel(path)
        raise
    problems = config.problems()
    if problems:
        field, reason = problems[0]
        source = str(path) if path is not None else "<environment>"
        lines: dict[str, int] = {}
        if path is not None:
            _, lines = parse_yaml(Path(path).read_text(encoding="utf-8"), source)
        raise ConfigError(reason, source=source, line=line_of(f"$.{field}", lines), field=field)
    return config


def check_notify_config(path: str | os.PathLike[str]) -> tuple[NotifyConfig | None, list[ConfigError]]:
    """Every mistake in the notify config file ``path``, each ``file:line: field: reason``
    (``signalfire notify check``): each channel is checked on its own, templates are compiled
    and trial-rendered, then the cross-field problems. The file alone is checked: ``SF_*``
    variables are not applied and secrets are not read (``notify test`` and start-up do)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return None, [ConfigError(f"cannot read config file: {exc.strerror}", source=source)]
    except UnicodeDecodeError:
        return None, [ConfigError("config file is not UTF-8 text", source=source)]
    try:
        data, lines = parse_yaml(text, source)
    except ConfigError as exc:
        return None, [exc]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [ConfigError("expected a mapping at the top level", source=source, line=lines.get("$"))]
    errors: list[ConfigError] = []
    channels: Any = data.get("channels")
    if isinstance(channels, dict):
        # a broken channel stands in as a `log` channel, so the routes naming it are checked too
        usable: dict[Any, Any] = {}
        for name, raw in channels.items():
            error = _channel_error(str(name), raw, source, lines)
            if error is not None:
                errors.append(error)
            usable[name] = {"type": "log"} if error is not None else raw
        data = {**data, "channels": usable}
    try:
        config = convert(data, NotifyConfig, source=source, lines=lines)
    except ConfigError as exc:
        return None, sorted([*errors, exc], key=lambda e: e.line or 0)
    for field, reason in config.problems():
        errors.append(ConfigError(reason, source=source, line=line_of(f"$.{field}", lines), field=field))
    return (None if errors else config), sorted(errors, key=lambda e: e.line or 0)


def _channel_error(name: str, raw: Any, source: str, lines: Mapping[str, int]) -> ConfigError | None:
    """What is wrong with channel ``name`` (its raw YAML value), named ``channels.<name>.<field>``."""
    prefix = f"$.channels.{name}"
    own_lines = {
        "$" + key[len(prefix) :]: line
        for key, line in lines.items()
        if key == prefix or key.startswith((prefix + ".", prefix + "["))
    }
    try:
        convert(raw, ChannelConfig, source=source, lines=own_lines)  # type: ignore[arg-type]
    except ConfigError as exc:
        where = ": ".join(p for p in (source + (f":{exc.line}" if exc.line else ""), exc.field) if p)
        reason = str(exc)[len(where) + 2 :]
        field = f"channels.{name}" + (f".{exc.field}" if exc.field else "")
        return ConfigError(reason, source=source, line=exc.line, field=field)
    return None


def _raise_for_channel(path: str | os.PathLike[str]) -> None:
    """msgspec reports a bad dict value as ``channels[...]``; find which channel it was."""
    source = str(path)
    data, lines = parse_yaml(Path(path).read_text(encoding="utf-8"), source)
    channels: Any = data.get("channels") if isinstance(data, dict) else None
    if not isinstance(channels, dict):
        return
    for name, raw in channels.items():
        error = _channel_error(str(name), raw, source, lines)
        if error is not None:
            raise error
