"""``signalfire rules check``: what an operator sees before deploying rules."""

from __future__ import annotations

from pathlib import Path

from signalfire.cli import main

REPO = Path(__file__).resolve().parents[3]


def test_check_accepts_the_default_pack(capsys):
    assert main(["rules", "check", str(REPO / "rules" / "default.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 5 rules\n"


def test_check_prints_every_error_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n"
        "  - name: A\n    metric: m\n    condition: '>> 1'\n    severity: low\n"
        "  - name: B\n    metric: m\n    condition: '> 1'\n    severity: urgent\n"
    )
    assert main(["rules", "check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith(str(bad))]
    assert errors[0].startswith(f"{bad}:4: rules[0].condition: ")
    assert errors[1].startswith(f"{bad}:9: rules[1].severity: ")


def test_check_counts_rules_across_files(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("rules:\n  - {name: A, metric: m, condition: '> 1', severity: low}\n")
    (tmp_path / "b.yaml").write_text("rules:\n  - {name: B, metric: m, condition: '< 1', severity: low}\n")
    assert main(["rules", "check", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 2 rules\n"
