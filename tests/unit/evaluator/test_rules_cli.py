"""``signalfire rules check`` and ``rules test``: what an operator sees before deploying rules."""

from __future__ import annotations

from pathlib import Path

from signalfire.cli import main

REPO = Path(__file__).resolve().parents[3]


def test_check_accepts_the_default_pack(capsys):
    assert main(["rules", "check", str(REPO / "rules" / "default.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 8 rules\n"


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


def test_the_default_pack_passes_its_rule_tests(capsys):
    assert main(["rules", "test", str(REPO / "rules" / "tests" / "default.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 11 tests\n"


def test_every_rule_kind_passes_its_rule_tests(capsys):
    assert main(["rules", "test", str(Path(__file__).parent / "rules" / "kinds_test.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 16 tests\n"


RULE = "rules:\n  - {name: Hot, metric: temp, condition: '> 50', for: 20s, severity: low}\n"


def write_test(tmp_path: Path, body: str) -> str:
    (tmp_path / "rules.yaml").write_text(RULE)
    path = tmp_path / "rules_test.yaml"
    path.write_text("rule_files: [rules.yaml]\ninterval: 10s\ntests:\n" + body)
    return str(path)


def test_a_wrong_expectation_exits_1_with_a_diff(tmp_path, capsys):
    path = write_test(
        tmp_path,
        "  - name: fires after 20s\n"
        "    input: [{series: 'temp{host=\"a\"}', values: '60x4'}]\n"
        "    expect: [{at: 10s, rule: Hot, status: firing}]\n",
    )
    assert main(["rules", "test", path]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"FAIL {path}: fires after 20s"
    assert "  -at=10s rule=Hot status=firing" in err
    assert "  +at=20s rule=Hot status=firing" in err
    assert err[-1] == "1 of 1 tests failed"


def test_an_unexpected_event_is_a_failure(tmp_path, capsys):
    path = write_test(
        tmp_path,
        "  - name: expects nothing\n"
        "    input: [{series: 'temp{host=\"a\"}', values: '60x3 _ 10'}]\n"
        "    expect: []\n",
    )
    assert main(["rules", "test", path]) == 1
    err = capsys.readouterr().err
    assert "+at=20s rule=Hot status=firing host=a" in err
    assert "+at=40s rule=Hot status=resolved host=a" in err


def test_bad_value_notation_names_the_input(tmp_path, capsys):
    path = write_test(tmp_path, "  - name: bad\n    input: [{series: 'temp{host=\"a\"}', values: '60 6O'}]\n")
    assert main(["rules", "test", path]) == 1
    assert f"{path}: tests[bad].input[0]: cannot read '6O'" in capsys.readouterr().err


def test_a_series_needs_a_host(tmp_path, capsys):
    path = write_test(tmp_path, "  - name: bad\n    input: [{series: 'temp', values: '60'}]\n")
    assert main(["rules", "test", path]) == 1
    assert "needs a host label" in capsys.readouterr().err


def test_an_invalid_rule_file_is_reported(tmp_path, capsys):
    path = write_test(tmp_path, "  - name: ok\n    input: []\n")
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {name: Hot, metric: temp, condition: '>> 1', severity: low}\n"
    )
    assert main(["rules", "test", path]) == 1
    assert "rules.yaml:2: rules[0].condition" in capsys.readouterr().err


def test_unknown_fields_in_a_test_file_are_named(tmp_path, capsys):
    path = write_test(tmp_path, "  - name: ok\n    inputs: []\n")
    assert main(["rules", "test", path]) == 1
    assert "inputs" in capsys.readouterr().err


def test_host_labels_may_be_set_for_the_whole_file_and_per_test(tmp_path, capsys):
    (tmp_path / "rules.yaml").write_text(
        "rules:\n"
        "  - {name: ProdHot, metric: temp, where: {env: prod}, condition: '> 50', severity: high,\n"
        "     annotations: {summary: '{{ labels.env }}/{{ labels.role }}'}}\n"
    )
    path = tmp_path / "rules_test.yaml"
    path.write_text(
        "rule_files: [rules.yaml]\n"
        "host_labels: {a: {env: prod, role: web}, b: {env: dev}}\n"
        "tests:\n"
        "  - name: the file's labels apply\n"
        "    input: [{series: 'temp{host=\"a\"}', values: '60'},\n"
        "            {series: 'temp{host=\"b\"}', values: '60'}]\n"
        "    expect: [{at: 0s, rule: ProdHot, status: firing, host: a, annotations: {summary: prod/web}}]\n"
        "  - name: a test's own labels override the file's, label by label\n"
        "    host_labels: {a: {role: db}, b: {env: prod}}\n"
        "    input: [{series: 'temp{host=\"a\"}', values: '60'},\n"
        "            {series: 'temp{host=\"b\"}', values: '60'}]\n"
        "    expect:\n"
        "      - {at: 0s, rule: ProdHot, status: firing, host: a, annotations: {summary: prod/db}}\n"
        "      - {at: 0s, rule: ProdHot, status: firing, host: b, annotations: {summary: prod/}}\n"
    )
    assert main(["rules", "test", str(path)]) == 0, capsys.readouterr().err
