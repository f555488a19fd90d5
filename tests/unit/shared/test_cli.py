"""The ``signalfire`` command itself: what a person sees before naming a subcommand."""

from __future__ import annotations

import pytest

from signalfire.cli import main


def test_no_subcommand_prints_every_installed_one_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    usage = capsys.readouterr().out
    assert usage.startswith("usage: signalfire ")
    listed = {line.split()[0] for line in usage.splitlines() if line.startswith("    ") and line.strip()}
    assert listed >= {"agent", "evaluator", "notifier", "gateway", "db", "token", "rules", "schemas"}
