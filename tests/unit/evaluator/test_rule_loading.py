"""Loading rule files: what users see when a rule is wrong, and what a good one becomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalfire.config import ConfigError
from signalfire.evaluator.rules import Condition, load_rules, parse_condition

REPO = Path(__file__).resolve().parents[3]

GOOD = """\
rules:
  - name: HighCPU
    metric: cpu.usage_percent
    where: {role: "web-*"}
    condition: "> 80"
    for: 1m
    resolve: "< 75"
    severity: high
    labels: {team: ops}
    annotations:
      summary: "CPU {{ value | round(1) }}% on {{ host }}"
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_rules([path])
    return str(info.value)


def test_a_good_rule_loads_with_its_fields(tmp_path):
    (rule,) = load_rules([write(tmp_path, GOOD)])
    assert rule.name == "HighCPU"
    assert rule.kind == "threshold"
    assert rule.metric == "cpu.usage_percent"
    assert rule.condition == Condition(">", 80.0)
    assert rule.resolve == Condition("<", 75.0)
    assert rule.for_ == 60.0
    assert rule.severity == "high"
    assert rule.labels == {"team": "ops"}
    assert rule.origin.endswith("rules.yaml:2")


def test_resolve_defaults_to_the_negated_condition(tmp_path):
    text = "rules:\n  - {name: A, metric: m, condition: '>= 0.5', severity: low}\n"
    (rule,) = load_rules([write(tmp_path, text)])
    assert rule.resolve == Condition("<", 0.5)
    assert rule.for_ == 0


@pytest.mark.parametrize(
    ("text", "op", "threshold"),
    [
        ("> 80", ">", 80),
        (">= 0.5", ">=", 0.5),
        ("< 10", "<", 10),
        ("== 0", "==", 0),
        ("!= 1", "!=", 1),
        ("<=-3", "<=", -3),
        ("  > 1e3 ", ">", 1000),
    ],
)
def test_conditions_parse(text, op, threshold):
    assert parse_condition(text) == Condition(op, threshold)


@pytest.mark.parametrize("text", [">> 80", "80", "> eighty", "=> 1", "> nan", "> inf", "", "> 1 2"])
def test_bad_conditions_are_rejected(text):
    with pytest.raises(ValueError, match="expected an operator"):
        parse_condition(text)


def test_bad_condition_names_file_line_and_field(tmp_path):
    message = load_error(tmp_path, GOOD.replace('"> 80"', '">> 80"'))
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:5: rules[0].condition: ")
    assert "'>> 80'" in message


def test_bad_resolve_names_its_field(tmp_path):
    message = load_error(tmp_path, GOOD.replace('"< 75"', '"under 75"'))
    assert ":7: rules[0].resolve: " in message


def test_resolve_overlapping_the_condition_is_an_error(tmp_path):
    message = load_error(tmp_path, GOOD.replace('"< 75"', '"< 90"'))
    assert ":7: rules[0].resolve: < 90 overlaps the condition > 80" in message


def test_unknown_kind_lists_the_allowed_kinds(tmp_path):
    message = load_error(tmp_path, GOOD.replace("    metric:", "    kind: gauge\n    metric:"))
    assert (
        ":3: rules[0].kind: unknown kind 'gauge'; "
        "allowed kinds: threshold, change, anomaly, ratio, event_count, absent" in message
    )


def test_bad_severity_lists_the_allowed_ones(tmp_path):
    message = load_error(tmp_path, GOOD.replace("severity: high", "severity: urgent"))
    assert ":8: rules[0].severity: unknown severity 'urgent'; allowed: critical, high, medium, low" in message


def test_template_syntax_error_is_a_load_error(tmp_path):
    message = load_error(tmp_path, GOOD.replace("{{ host }}", "{{ host "))
    assert ":11: rules[0].annotations.summary: template error:" in message


def test_unknown_template_filter_is_a_load_error(tmp_path):
    message = load_error(tmp_path, GOOD.replace("round(1)", "rond(1)"))
    assert ":11: rules[0].annotations.summary: template error: No filter named 'rond'" in message


def test_unknown_template_variable_is_a_load_error(tmp_path):
    message = load_error(tmp_path, GOOD.replace("{{ host }}", "{{ hots }}"))
    assert ":11: rules[0].annotations.summary: unknown template variable hots" in message


def test_invalid_yaml_names_the_line(tmp_path):
    message = load_error(tmp_path, "rules:\n  - name: [unclosed\n")
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:")
    assert "invalid YAML" in message


def test_unquoted_condition_gets_a_hint(tmp_path):
    message = load_error(tmp_path, GOOD.replace('"> 80"', "> 80"))
    assert ":5: invalid YAML:" in message
    assert "quote conditions" in message


def test_unknown_field_is_named_at_its_line_with_the_fields_its_kind_takes(tmp_path):
    message = load_error(tmp_path, GOOD.replace("for: 1m", "fro: 1m"))
    assert message.endswith(
        ":6: rules[0].fro: unknown field; a threshold rule takes name, severity, kind, condition, "
        "resolve, metric, aggregate, window, where, group_by, for, keep_firing_for, cooldown, flap, "
        "max_series, labels, annotations"
    )


def test_an_unknown_field_of_an_absent_rule_lists_only_what_absent_rules_take(tmp_path):
    message = load_error(tmp_path, "rules:\n  - {name: A, kind: absent, for: 30s, severity: low, fro: 1}\n")
    assert "rules[0].fro: unknown field; an absent rule takes name, severity, kind, metric, where," in message
    assert "condition" not in message


def test_every_setting_of_another_kind_is_named_with_the_kinds_that_take_it(tmp_path):
    text = (
        "rules:\n  - name: A\n    kind: absent\n    for: 30s\n    window: 1m\n"
        "    condition: '> 1'\n    severity: urgent\n"
    )
    assert load_error(tmp_path, text).splitlines() == [
        f"{tmp_path / 'rules.yaml'}:5: rules[0].window: "
        "`window` applies to threshold, change, ratio, event_count rules, not absent",
        f"{tmp_path / 'rules.yaml'}:6: rules[0].condition: "
        "`condition` applies to threshold, change, anomaly, ratio, event_count rules, not absent",
        f"{tmp_path / 'rules.yaml'}:7: rules[0].severity: "
        "unknown severity 'urgent'; allowed: critical, high, medium, low",
    ]


def test_wrong_type_names_the_field(tmp_path):
    message = load_error(tmp_path, GOOD.replace("for: 1m", "for: soon"))
    assert ":6: rules[0].for: " in message


def test_missing_field_names_the_rule(tmp_path):
    message = load_error(tmp_path, "rules:\n  - name: A\n    metric: m\n    severity: low\n")
    assert ":2: rules[0]: a threshold rule needs `condition`" in message


def test_bad_matcher_regex_names_the_label(tmp_path):
    message = load_error(tmp_path, GOOD.replace('"web-*"', '"~(("'))
    assert ":4: rules[0].where.role: invalid regular expression" in message


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"~(a)\\1", "backreferences are not supported"),
        ("~web(?!-1)", "lookahead (?=…) / (?!…) is not supported"),
    ],
)
def test_a_regex_re2_cannot_run_is_refused_at_load_with_file_line_field_and_reason(tmp_path, pattern, reason):
    message = load_error(tmp_path, GOOD.replace('"web-*"', f'"{pattern}"'))
    assert ":4: rules[0].where.role: invalid regular expression " in message
    assert f"{reason} (RE2 syntax, see docs/rules.md)" in message


def test_a_selector_regex_re2_cannot_run_is_refused_at_load(tmp_path):
    rule = (
        "rules:\n  - {name: A, kind: ratio, numerator: 'x{a=~\"(a)\\1\"}', denominator: x, window: 1m, "
        "condition: '> 1', severity: low}\n"
    )
    message = load_error(tmp_path, rule)
    assert ":2: rules[0].numerator: invalid regular expression" in message
    assert "backreferences are not supported" in message


def test_top_level_must_be_a_mapping(tmp_path):
    message = load_error(tmp_path, "- name: A\n")
    assert "expected a mapping with a `rules:` list" in message


def test_every_error_of_a_file_is_reported(tmp_path):
    text = GOOD + GOOD.replace("rules:\n", "").replace("HighCPU", "Other").replace("high", "urgent")
    text = text.replace('"> 80"', '"80"', 1)
    message = load_error(tmp_path, text)
    lines = message.splitlines()
    assert len(lines) == 2
    assert "rules[0].condition" in lines[0]
    assert "rules[1].severity" in lines[1]


def test_duplicate_names_across_files_are_an_error(tmp_path):
    first = write(tmp_path, GOOD, "a.yaml")
    second = write(
        tmp_path,
        "rules:\n  - {name: Other, metric: m, condition: '> 1', severity: low}\n"
        + GOOD.replace("rules:\n", ""),
        "b.yaml",
    )
    with pytest.raises(ConfigError) as info:
        load_rules([first, second])
    assert str(info.value) == (
        f"{second}:3: rules[1].name: duplicate rule name 'HighCPU' (first defined at {first}:2)"
    )


def test_directories_and_globs_load_every_yaml_file(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("HighCPU", "Second"), "b.yml")
    write(tmp_path, "not yaml rules", "notes.txt")
    assert [r.name for r in load_rules([str(tmp_path)])] == ["HighCPU", "Second"]
    assert [r.name for r in load_rules([str(tmp_path / "*.yaml")])] == ["HighCPU"]


def test_missing_file_and_empty_glob_are_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_rules([str(tmp_path / "missing.yaml"), str(tmp_path / "*.yaml")])
    message = str(info.value)
    assert f"{tmp_path / 'missing.yaml'}: cannot read rule file" in message
    assert "no rule files match this pattern" in message


def test_empty_file_has_no_rules(tmp_path):
    assert load_rules([write(tmp_path, "")]) == []
    assert load_rules([write(tmp_path, "rules:\n")]) == []


def test_annotations_render_with_the_documented_variables(tmp_path):
    (rule,) = load_rules([write(tmp_path, GOOD)])
    rendered, failed = rule.render_annotations(
        {"value": 91.26, "threshold": 80.0, "host": "web-1", "labels": {}, "rule": "HighCPU"}
    )
    assert rendered == {"summary": "CPU 91.3% on web-1"}
    assert failed == []


def test_a_failing_template_falls_back_to_its_raw_text(tmp_path):
    text = GOOD.replace("{{ value | round(1) }}", "{{ value | int(base=labels) }}{{ 1 / 0 }}")
    (rule,) = load_rules([write(tmp_path, text)])
    rendered, failed = rule.render_annotations(
        {"value": 1.0, "threshold": 80.0, "host": "web-1", "labels": {}, "rule": "HighCPU"}
    )
    assert failed == ["summary"]
    assert rendered["summary"] == rule.spec.annotations["summary"]


def test_templates_run_in_a_sandbox(tmp_path):
    text = GOOD.replace("{{ host }}", "{{ labels.__class__.__init__.__globals__ }}")
    (rule,) = load_rules([write(tmp_path, text)])
    rendered, failed = rule.render_annotations(
        {"value": 1.0, "threshold": 80.0, "host": "web-1", "labels": {}, "rule": "HighCPU"}
    )
    assert failed == ["summary"]
    assert "__globals__" in rendered["summary"]  # the raw template, not the interpreter's globals


def test_the_default_rule_pack_loads_and_renders():
    rules = load_rules([str(REPO / "rules" / "default.yaml")])
    assert {r.name: (r.kind, r.metric, str(r.condition), r.for_, r.severity) for r in rules} == {
        "HighCPU": ("threshold", "cpu.usage_percent", "> 80", 60.0, "high"),
        "CriticalCPU": ("threshold", "cpu.usage_percent", "> 95", 30.0, "critical"),
        "HighMemory": ("threshold", "mem.used_percent", "> 85", 120.0, "high"),
        "DiskFull": ("threshold", "disk.used_percent", "> 90", 0.0, "high"),
        "SlowHttpCheck": ("threshold", "check.http.latency_ms", "> 2000", 0.0, "medium"),
        "HighErrorRate": ("ratio", "", "> 0.1", 0.0, "high"),
        "FailedLoginSpike": ("event_count", "", "> 5", 0.0, "medium"),
        "HostDown": ("absent", "", ">= 30", 0.0, "critical"),
    }
    assert next(r for r in rules if r.name == "HighCPU").resolve == Condition("<", 75)
    for rule in rules:
        assert set(rule.annotations) == {"summary", "description"}
        rendered, failed = rule.render_annotations(
            {
                "value": 97.0,
                "threshold": 90.0,
                "host": "db-1",
                "labels": {"mount": "/var", "target": "https://example.test/"},
                "rule": rule.name,
            }
        )
        assert failed == []
        assert "db-1" in rendered["summary"] + rendered["description"]
    disk = next(r for r in rules if r.name == "DiskFull")
    rendered, _ = disk.render_annotations(
        {"value": 97.04, "threshold": 90.0, "host": "db-1", "labels": {"mount": "/var"}, "rule": "DiskFull"}
    )
    assert rendered["summary"] == "Disk /var at 97.0% on db-1"
    slow = next(r for r in rules if r.name == "SlowHttpCheck")
    rendered, _ = slow.render_annotations(
        {
            "value": 2500.6,
            "threshold": 2000.0,
            "host": "db-1",
            "labels": {"target": "https://x.test/"},
            "rule": "SlowHttpCheck",
        }
    )
    assert rendered["summary"] == "HTTP check https://x.test/ slow: 2501 ms on average"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "{name: A, metric: m, aggregate: avg, condition: '> 1', severity: low}",
            "rules[0].window: aggregate avg needs a `window`",
        ),
        (
            "{name: A, metric: m, aggregate: mean, window: 1m, condition: '> 1', severity: low}",
            "rules[0].aggregate: unknown aggregate 'mean'",
        ),
        (
            "{name: A, kind: change, metric: m, aggregate: avg, window: 1m, condition: '> 1', severity: low}",
            "a change rule takes increase, rate, delta",
        ),
        (
            "{name: A, kind: change, metric: m, condition: '> 1', severity: low}",
            "rules[0]: a change rule needs `window`",
        ),
        ("{name: A, kind: absent, severity: low}", "rules[0]: an absent rule needs `for`"),
        (
            "{name: A, kind: absent, for: 30s, condition: '> 1', severity: low}",
            "rules[0].condition: `condition` applies to",
        ),
        (
            "{name: A, kind: absent, for: 30s, group_by: series, severity: low}",
            "grouped by series needs a `metric`",
        ),
        (
            "{name: A, metric: m, event: x, condition: '> 1', severity: low}",
            "rules[0].event: `event` applies to event_count rules, not threshold",
        ),
        (
            "{name: A, kind: anomaly, metric: m, group_by: host, condition: '> 3', severity: low}",
            "an anomaly rule takes series",
        ),
        (
            "{name: A, kind: ratio, numerator: 'x{a=~\"(\"}', denominator: x, window: 1m, "
            "condition: '> 1', severity: low}",
            "rules[0].numerator: invalid regular expression",
        ),
        (
            "{name: A, kind: ratio, numerator: 'x{a=b}', denominator: x, window: 1m, "
            "condition: '> 1', severity: low}",
            "rules[0].numerator: cannot read the label matchers",
        ),
        (
            "{name: A, kind: ratio, numerator: x, window: 1m, condition: '> 1', severity: low}",
            "a ratio rule needs `denominator`",
        ),
        (
            "{name: A, kind: event_count, event: x, window: 0s, condition: '> 1', severity: low}",
            "rules[0].window: must be longer than 0s",
        ),
        (
            "{name: A, metric: m, condition: '> 1', flap: {changes: 0, window: 1m}, severity: low}",
            "rules[0].flap.changes",
        ),
        ("{name: A, kind: anomaly, metric: m, alpha: 2, condition: '> 3', severity: low}", "rules[0].alpha"),
        (
            "{name: A, kind: null, metric: m, condition: '> 1', severity: low}",
            "rules[0].kind: Expected `str`, got `null`",
        ),
        (
            "{name: A, kind: 5, metric: m, condition: '> 1', severity: low}",
            "rules[0].kind: Expected `str`, got `int`",
        ),
    ],
)
def test_kind_specific_mistakes_name_the_field(tmp_path, rule, message):
    assert message in load_error(tmp_path, f"rules:\n  - {rule}\n")


def test_ratio_selectors_match_like_promql(tmp_path):
    text = (
        'rules:\n  - {name: A, kind: ratio, numerator: \'http.requests{status=~"5..", path!="/health"}\', '
        "denominator: http.requests, window: 5m, condition: '> 0.1', severity: low}\n"
    )
    (rule,) = load_rules([write(tmp_path, text)])
    assert rule.numerator is not None and rule.denominator is not None
    assert rule.numerator.metric == rule.denominator.metric == "http.requests"
    assert rule.group_by == "host"
    assert rule.numerator.matches({"status": "503", "path": "/"})
    assert not rule.numerator.matches({"status": "5030", "path": "/"})  # whole-value regex
    assert not rule.numerator.matches({"status": "500", "path": "/health"})
