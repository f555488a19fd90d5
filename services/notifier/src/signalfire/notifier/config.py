"""``notify.yaml``: the notifier's whole configuration (channels, routes, NATS, logging).

:func:`load_notify_config` is the only way in; every error names the file, the line and
the field, e.g. ``notify.yaml:14: routes[1].channels[0]: unknown channel 'pager'``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from signalfire.bus import NatsConfig
from signalfire.config import ConfigError, Duration, convert, line_of, load_config, parse_yaml
from signalfire.notifier.channels import ChannelConfig
from signalfire.telemetry import parse_listen

#: Channel names become subject tokens (``sf.notifications.<name>``) and KV key parts.
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class Route(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Alerts whose fields equal every ``match`` entry go to ``channels``.

    ``match`` keys are ``severity``, ``rule``, ``host`` or any alert label; an empty
    ``match`` matches every alert. The first matching route wins unless it says
    ``continue: true``.
    """

    channels: Annotated[list[str], Meta(min_length=1)]
    match: dict[str, str] = {}
    continue_: bool = msgspec.field(default=False, name="continue")


class NotifyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The notifier's settings; see ``notify.example.yaml`` and ``docs/notifications.md``."""

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    log_level: str = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"
    channels: dict[str, ChannelConfig] = {}
    routes: list[Route] = []
    #: ``host:port`` serving ``/metrics``; off when unset.
    metrics_listen: str | None = None
    #: How long an alert event may stay unacknowledged before JetStream redelivers it
    #: (the notifier extends it while deliveries are still being retried).
    ack_wait: Duration = Duration(60)
    #: Deliveries of one alert event before JetStream gives up on it.
    max_deliver: Annotated[int, Meta(ge=1, le=1000)] = 5
    #: Alert events processed at the same time by one replica.
    max_in_flight: Annotated[int, Meta(ge=1, le=10_000)] = 64
    #: When the durable consumer is first created, alert events this old are still delivered.
    first_start_backlog: Duration = Duration(300)

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field mistakes as ``(field path, reason)``, e.g. a route naming an unknown channel."""
        found: list[tuple[str, str]] = []
        for name in self.channels:
            if not CHANNEL_NAME.match(name):
                found.append((f"channels.{name}", "a channel name may contain only A-Z a-z 0-9 _ -"))
        known = ", ".join(sorted(self.channels)) or "none"
        for i, route in enumerate(self.routes):
            for j, channel in enumerate(route.channels):
                if channel not in self.channels:
                    found.append(
                        (f"routes[{i}].channels[{j}]", f"unknown channel {channel!r} (configured: {known})")
                    )
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ValueError as exc:
                found.append(("metrics_listen", str(exc)))
        if self.ack_wait < 1:
            found.append(("ack_wait", "must be at least 1s"))
        return found


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


def _raise_for_channel(path: str | os.PathLike[str]) -> None:
    """msgspec reports a bad dict value as ``channels[...]``; find which channel it was."""
    source = str(path)
    data, lines = parse_yaml(Path(path).read_text(encoding="utf-8"), source)
    channels: Any = data.get("channels") if isinstance(data, dict) else None
    if not isinstance(channels, dict):
        return
    for name, raw in channels.items():
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
            raise ConfigError(reason, source=source, line=exc.line, field=field) from None
