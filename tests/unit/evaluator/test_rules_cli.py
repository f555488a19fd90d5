"""``signalfire rules check`` and ``rules test``: what an operator sees before deploying rules."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "{series: 'temp{host=\"a\"}', values: '60 _+1'}",
            "cannot read '_+1'; a missing value (_) has no step",
        ),
        ("{series: 'temp{host=\"a\"}', values: '1.2.3'}", "cannot read '1.2.3'; write 50, 50x3, 1+2x5 or _"),
        ("{series: '9temp{host=\"a\"}', values: '60'}", 'expected name{host="…", label="…"}, got \'9temp'),
        (
            "{series: 'temp{host=\"a\", mount}', values: '60'}",
            "cannot read the labels at ' mount'; write label=\"value\"",
        ),
        ("{series: 'temp{host=\"a\"}', events: 'deploy{host=\"a\"}', values: '1'}", "give exactly one of"),
        (
            "{agent: a, values: 'online maybe'}",
            "cannot read 'maybe'; write online, offline or _ (xN repeats)",
        ),
        ("{events: 'deploy{host=\"a\"}', values: '1.5'}", "an event count must be a whole number, got 1.5"),
    ],
)
def test_input_mistakes_name_the_input(tmp_path, capsys, item: str, message: str):
    path = write_test(tmp_path, f"  - name: bad\n    input: [{item}]\n")
    assert main(["rules", "test", path]) == 1
    assert f"{path}: tests[bad].input[0]: {message}" in capsys.readouterr().err


def test_a_falling_series_steps_down(tmp_path, capsys):
    path = write_test(
        tmp_path,
        "  - name: 80 70 60 50 40 is hot for 20 s then cool\n"
        "    input: [{series: 'temp{host=\"a\"}', values: '80-10x5'}]\n"
        "    expect:\n"
        "      - {at: 20s, rule: Hot, status: firing, value: 60}\n"
        "      - {at: 30s, rule: Hot, status: resolved, value: 50}\n",
    )
    assert main(["rules", "test", path]) == 0, capsys.readouterr().err


def test_a_diff_shows_only_the_fields_the_test_expects(tmp_path, capsys):
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {name: Hot, metric: temp, condition: '> 50', severity: low,\n"
        "     labels: {team: ops}, annotations: {summary: 'hot {{ host }}'}}\n"
    )
    path = tmp_path / "rules_test.yaml"
    path.write_text(
        "rule_files: [rules.yaml]\ntests:\n"
        "  - name: every field wrong\n"
        "    input: [{series: 'temp{host=\"a\"}', values: '60.25'}]\n"
        "    expect: [{at: 0s, rule: Hot, status: firing, host: b, severity: high, value: 61,\n"
        "              labels: {team: db}, annotations: {summary: 'hot b'}}]\n"
    )
    assert main(["rules", "test", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        '  -at=0s rule=Hot status=firing host=b severity=high value=61 labels={"team":"db"}'
        ' annotations={"summary":"hot b"}'
    ) in err
    assert (
        '  +at=0s rule=Hot status=firing host=a severity=low value=60.25 labels={"team":"ops"}'
        ' annotations={"summary":"hot a"}'
    ) in err


@pytest.mark.parametrize(
    ("field", "wrong"),
    [("rule", "Cold"), ("host", "b"), ("severity", "high"), ("value", "61"), ("labels", "{team: db}")],
)
def test_one_wrong_field_fails_the_test(tmp_path, capsys, field: str, wrong: str):
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {name: Hot, metric: temp, condition: '> 50', severity: low, labels: {team: ops}}\n"
    )
    right = {"rule": "Hot", "host": "a", "severity": "low", "value": "60", "labels": "{team: ops}"}
    expected = ", ".join(f"{k}: {wrong if k == field else v}" for k, v in right.items())
    path = tmp_path / "rules_test.yaml"
    path.write_text(
        "rule_files: [rules.yaml]\ntests:\n"
        "  - name: one field wrong\n"
        "    input: [{series: 'temp{host=\"a\"}', values: '60'}]\n"
        f"    expect: [{{at: 0s, status: firing, {expected}}}]\n"
    )
    assert main(["rules", "test", str(path)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "1 of 1 tests failed"
    path.write_text(path.read_text().replace(f"{field}: {wrong}", f"{field}: {right[field]}"))
    assert main(["rules", "test", str(path)]) == 0


def test_a_missing_test_file_and_a_zero_interval_are_named(tmp_path, capsys):
    assert main(["rules", "test", str(tmp_path / "gone.yaml")]) == 1
    assert (
        f"{tmp_path / 'gone.yaml'}: cannot read test file: No such file or directory"
        in capsys.readouterr().err
    )
    path = write_test(tmp_path, "  - name: frozen\n    interval: 0s\n    input: []\n")
    assert main(["rules", "test", path]) == 1
    assert f"{path}: tests[frozen].interval: must be longer than 0s" in capsys.readouterr().err


def _rule_test(tmp_path: Path, rule: str, test: str) -> str:
    (tmp_path / "rules.yaml").write_text(f"rules:\n  - {rule}\n")
    path = tmp_path / "rules_test.yaml"
    path.write_text(f"rule_files: [rules.yaml]\ninterval: 10s\ntests:\n{test}")
    return str(path)


def test_a_last_value_threshold_grouped_by_host_is_one_alert_per_host(tmp_path, capsys):
    path = _rule_test(
        tmp_path,
        "{name: HostFull, metric: disk.used_percent, condition: '> 90', group_by: host, for: 10s,"
        " severity: high}",
        "  - name: any mount of the host, one alert without the mount label\n"
        "    input:\n"
        "      - {series: 'disk.used_percent{host=\"a\", mount=\"/var\"}', values: '50 95 95 95 50'}\n"
        "    expect:\n"
        "      - {at: 20s, rule: HostFull, status: firing, host: a, value: 95}\n"
        "      - {at: 40s, rule: HostFull, status: resolved, host: a, value: 50}\n",
    )
    assert main(["rules", "test", path]) == 0, capsys.readouterr().err


def test_an_anomaly_on_a_flat_baseline_fires_at_the_first_change(tmp_path, capsys):
    path = _rule_test(
        tmp_path,
        "{name: Jump, kind: anomaly, metric: load.1m, alpha: 0.5, warmup: 3, condition: '> 3',"
        " severity: low}",
        "  - name: any change from a flat baseline is as unusual as can be\n"
        "    input: [{series: 'load.1m{host=\"a\"}', values: '5 5 5 5.5'}]\n"
        "    expect: [{at: 30s, rule: Jump, status: firing, value: 1e9}]\n",
    )
    assert main(["rules", "test", path]) == 0, capsys.readouterr().err
