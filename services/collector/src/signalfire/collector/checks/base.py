"""What every check is, its config, and the result codes shared by the network checks."""

from __future__ import annotations

import re
from typing import ClassVar, Literal, Protocol

import msgspec

from signalfire.collector.collectors.base import MetricSpec
from signalfire.config import Duration
from signalfire.events import Sample
from signalfire.regex import RegexError, compile_regex

Result = Literal["ok", "timeout", "connection_failed", "bad_status", "bad_content", "tls_error"]

#: ``check.<kind>.result_code`` values, in the spirit of Telegraf's ``result_code``.
RESULT_CODES: dict[Result, int] = {
    "ok": 0,
    "timeout": 1,
    "connection_failed": 2,
    "bad_status": 3,
    "bad_content": 4,
    "tls_error": 5,
}


class HttpCheckConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One HTTP(S) endpoint to probe."""

    url: str
    #: The ``target`` label; default: the URL.
    name: str | None = None
    method: Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"] = "GET"
    headers: dict[str, str] = {}
    body: str = ""
    #: Status codes that count as up; default: anything below 400.
    expect_status: list[int] = []
    #: A regular expression the response body must match (searched in the first MiB).
    body_match: str | None = None
    interval: Duration | None = None
    timeout: Duration = Duration(5)
    tls_verify: bool = True
    tls_ca: str | None = None

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/?#]+", self.url):
            raise ValueError(f"url: must be http://host[:port]/... or https://..., got {self.url!r}")
        _check_regex("body_match", self.body_match)
        _check_timing(self.interval, self.timeout)


class TcpCheckConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One TCP port that must accept connections."""

    address: str
    name: str | None = None
    interval: Duration | None = None
    timeout: Duration = Duration(5)

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"address: must be host:port, got {self.address!r}")
        _check_timing(self.interval, self.timeout)


class ProcessCheckConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A named process that must be running: by executable name, or a regular expression
    searched in the command line."""

    name: str
    #: Regular expression on the command line; default: processes whose name is ``name``.
    cmdline: str | None = None
    min_count: int = 1
    interval: Duration | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name: must not be empty")
        _check_regex("cmdline", self.cmdline)
        if self.min_count < 1:
            raise ValueError(f"min_count: must be 1 or more, got {self.min_count}")
        _check_timing(self.interval, Duration(1))


class ChecksConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    http: list[HttpCheckConfig] = []
    tcp: list[TcpCheckConfig] = []
    process: list[ProcessCheckConfig] = []


def _check_regex(field: str, pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        compile_regex(pattern)
    except RegexError as exc:
        raise ValueError(f"{field}: not a valid regular expression: {exc}") from None


def _check_timing(interval: float | None, timeout: float) -> None:
    if interval is not None and interval < 0.2:
        raise ValueError(f"interval: must be at least 0.2s, got {float(interval)}s")
    if timeout <= 0:
        raise ValueError(f"timeout: must be more than 0s, got {float(timeout)}s")


class Check(Protocol):
    """A probe run by :class:`~.runner.CheckRunner` every ``interval`` seconds. ``run()``
    returns the samples of one probe and must finish within ``timeout`` on its own (the
    runner cancels it a second later as a last resort and reports ``timeout``); ``close()``
    releases what a check keeps between runs, once it will run no more."""

    kind: ClassVar[str]
    METRICS: ClassVar[tuple[MetricSpec, ...]]
    target: str
    interval: float
    timeout: float

    async def run(self) -> list[Sample]: ...

    def failed(self, result: Result) -> list[Sample]: ...

    async def close(self) -> None: ...


def outcome(kind: str, target: str, result: Result, latency_ms: float | None = None) -> list[Sample]:
    """``check.<kind>.up``, ``.result_code`` and (when measured) ``.latency_ms`` for ``target``."""
    labels = {"target": target}
    samples = [
        Sample(f"check.{kind}.up", 1.0 if result == "ok" else 0.0, labels),
        Sample(f"check.{kind}.result_code", float(RESULT_CODES[result]), labels),
    ]
    if latency_ms is not None:
        samples.append(Sample(f"check.{kind}.latency_ms", round(latency_ms, 2), labels))
    return samples


def outcome_specs(kind: str, what: str) -> tuple[MetricSpec, ...]:
    return (
        MetricSpec(f"check.{kind}.up", ("target",), "bool", f"1 when the {what} check passed, else 0"),
        MetricSpec(
            f"check.{kind}.result_code",
            ("target",),
            "code",
            "0 ok, 1 timeout, 2 connection_failed, 3 bad_status, 4 bad_content, 5 tls_error",
        ),
        MetricSpec(f"check.{kind}.latency_ms", ("target",), "milliseconds", f"Time the {what} check took"),
    )
