"""`make up`'s supervisor says why a service that exited on a configuration error did (a secret
not set, a file's mistake), or stopped because a loop it cannot live without ended, where the
person editing the files looks: its terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from devstack import Supervisor


class Exited:
    """A service whose process wrote ``log`` and exited with ``code``."""

    def __init__(self, tmp_path: Path, name: str, code: int, log: str) -> None:
        self.name = name
        self.log_path = tmp_path / f"{name}.log"
        self.log_path.write_text(log)
        self.proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
        self.proc.wait()

    def start(self) -> object:
        return self


def supervised(tmp_path: Path, service: Exited, capsys: pytest.CaptureFixture[str]) -> str:
    idle = SimpleNamespace(proc=None, log_path=tmp_path / "idle.log", start=lambda: None)
    running: Any = SimpleNamespace(nats=idle, nats_nodes=[], postgres=idle, services=[service], logs=tmp_path)
    Supervisor(running).step()
    return capsys.readouterr().err


def test_a_service_that_exits_on_a_config_error_is_shown_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = (
        "signalfire: heartbeat.url_env: environment variable SIGNALFIRE_HEARTBEAT_URL is not set "
        "(it must hold the url)"
    )
    notifier = Exited(tmp_path, "notifier", 2, f"ts=… level=info msg=starting\n{reason}\n\n")
    said = supervised(tmp_path, notifier, capsys)
    assert "notifier exited (exit code 2)" in said and said.rstrip().endswith(f"\n  {reason}"), said
    assert reason in (tmp_path / "devstack.log").read_text()


def test_another_exit_is_shown_without_its_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = Exited(tmp_path, "gateway", 1, "Traceback (most recent call last):\n  boom\n")
    said = supervised(tmp_path, gateway, capsys)
    assert "gateway exited (exit code 1)" in said and "boom" not in said, said


def test_a_service_stopped_by_a_loop_that_ended_is_shown_with_the_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "signalfire: stopped: evaluator-tick ended: RuntimeError: a bug in judging"
    log = f"Traceback (most recent call last):\n  boom\nRuntimeError: a bug in judging\n{reason}\n"
    evaluator = Exited(tmp_path, "evaluator", 1, log)
    said = supervised(tmp_path, evaluator, capsys)
    assert "evaluator exited (exit code 1)" in said and said.rstrip().endswith(f"\n  {reason}"), said
    assert "boom" not in said
