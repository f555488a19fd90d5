"""The check runner keeps going when one check has a bug: that check reports down, the log
says which, and the others report as usual."""

from __future__ import annotations

import logging
import socket

import pytest

from signalfire.collector.checks import CheckRunner, ProcessCheck, TcpCheck
from signalfire.collector.checks.base import Check, ProcessCheckConfig, TcpCheckConfig
from signalfire.events import Sample


class BrokenProcessCheck(ProcessCheck):
    """A process check with a bug: its measurement raises what no check expects."""

    def measure(self) -> list[Sample]:
        raise KeyError("status")


async def test_a_check_that_raises_reports_down_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        host, port = server.getsockname()
        checks: list[Check] = [
            BrokenProcessCheck(ProcessCheckConfig(name="nginx"), 10.0),
            TcpCheck(TcpCheckConfig(address=f"{host}:{port}", name="db"), 10.0),
        ]
        with caplog.at_level(logging.ERROR, logger="signalfire.collector.checks"):
            samples = await CheckRunner(checks).run_once()
    up = {
        (s.labels.get("process") or s.labels.get("target")): s.value
        for s in samples
        if s.name.endswith(".up")
    }
    assert up == {"nginx": 0.0, "db": 1.0}
    [record] = caplog.records
    assert record.getMessage() == "check failed"
    assert (record.check, record.target) == ("process", "nginx")  # type: ignore[attr-defined]
    assert record.exc_info is not None  # the traceback, for the bug report
