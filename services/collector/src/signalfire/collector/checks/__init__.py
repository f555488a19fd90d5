"""Service checks, one module per kind, run on their own schedules by :class:`CheckRunner`."""

from __future__ import annotations

from signalfire.collector.checks.base import RESULT_CODES, Check, ChecksConfig
from signalfire.collector.checks.process import ProcessCheck
from signalfire.collector.checks.runner import CheckRunner
from signalfire.collector.checks.tcp import TcpCheck

__all__ = [
    "RESULT_CODES",
    "Check",
    "CheckRunner",
    "ChecksConfig",
    "ProcessCheck",
    "TcpCheck",
    "build_checks",
]


def build_checks(config: ChecksConfig, default_interval: float) -> list[Check]:
    """One check object per configured check."""
    checks: list[Check] = []
    if config.http:
        # h11 and the TLS context only for agents that have an HTTP check.
        from signalfire.collector.checks.http import HttpCheck

        checks += [HttpCheck(c, default_interval) for c in config.http]
    checks += [TcpCheck(c, default_interval) for c in config.tcp]
    checks += [ProcessCheck(c, default_interval) for c in config.process]
    return checks
