"""``signalfire rules test``: rule unit tests, in the spirit of ``promtool test rules``.

A test file names rule files and lists tests; each test feeds input series (written in a
compact notation, see :func:`expand_values`) through the same :class:`~.engine.Engine` the
evaluator runs, on a simulated clock, and compares the alert events that come out with the
expected ones. The format is documented in ``docs/rules.md``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from signalfire.config import ConfigError, Duration, convert, parse_yaml
from signalfire.evaluator.engine import Engine
from signalfire.evaluator.rules import load_rules
from signalfire.events import AgentStatus, AlertEvent, Event, EventBatch, MetricBatch, Sample

#: Simulated time starts here (2023-11-14T22:13:20Z); reported times are relative to it.
EPOCH = 1_700_000_000.0


class Input(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One input line: a metric series, an event type or an agent's status, and its values."""

    values: str
    series: str | None = None
    events: str | None = None
    agent: str | None = None


class Expected(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """An expected alert event; fields left out are not compared."""

    at: Duration
    rule: str
    status: Literal["firing", "resolved"]
    host: str | None = None
    severity: str | None = None
    value: float | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class RuleTest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    input: list[Input]
    expect: list[Expected] = []
    interval: Duration | None = None
    #: Simulated time to run for; default: one interval past the last input value.
    duration: Duration | None = None
    #: Compare only the events of these rules (default: every rule's events).
    rules: list[str] | None = None
    #: Batch labels per host (``env``, ``role``), matched by ``where`` and copied onto alerts.
    host_labels: dict[str, dict[str, str]] = {}


class TestFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rule_files: Annotated[list[str], Meta(min_length=1)]
    tests: list[RuleTest]
    interval: Duration = Duration(10)
    #: How often the simulated evaluator's timer ticks between inputs.
    tick: Duration = Duration(1)
    #: Batch labels per host for every test; a test's own ``host_labels`` add to (and, label
    #: by label, override) them, as its ``interval`` overrides the file's.
    host_labels: dict[str, dict[str, str]] = {}


@dataclass
class Result:
    name: str
    diff: list[str]

    @property
    def passed(self) -> bool:
        return not self.diff


_TOKEN = re.compile(
    r"^(?P<start>[-+]?[0-9.eE]+|_)(?:(?P<op>[+-])(?P<step>[0-9.eE]+))?(?:x(?P<count>[0-9]+))?$"
)
_SERIES = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*(?:\{(.*)\})?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def expand_values(text: str) -> list[float | None]:
    """``"50 50 95x3 _ 1+2x3"`` → ``[50, 50, 95, 95, 95, None, 1, 3, 5]``.

    ``v`` is one value; ``vxN`` is N values ``v``; ``a+bxN`` (or ``a-bxN``) is N values
    starting at ``a`` and stepping by ``b``; ``_`` (``_xN``) is a step (N steps) without a
    value. Raises ``ValueError`` naming the token it cannot read.
    """
    values: list[float | None] = []
    for token in text.split():
        match = _TOKEN.match(token)
        if match is None:
            raise ValueError(f"cannot read {token!r}; write 50, 50x3, 1+2x5 or _")
        count = int(match.group("count")) if match.group("count") else 1
        if match.group("start") == "_":
            if match.group("op"):
                raise ValueError(f"cannot read {token!r}; a missing value (_) has no step")
            values.extend([None] * count)
            continue
        try:
            start = float(match.group("start"))
            step = float(match.group("step")) if match.group("step") else 0.0
        except ValueError:
            raise ValueError(f"cannot read {token!r}; write 50, 50x3, 1+2x5 or _") from None
        if match.group("op") == "-":
            step = -step
        values.extend(start + i * step for i in range(count))
    return values


def parse_series(text: str) -> tuple[str, str, dict[str, str]]:
    """``'cpu.usage_percent{host="web-1", mount="/"}'`` → (name, host, other labels)."""
    match = _SERIES.match(text)
    if match is None:
        raise ValueError(f'expected name{{host="…", label="…"}}, got {text!r}')
    labels: dict[str, str] = {}
    body = (match.group(2) or "").rstrip()
    pos = 0
    while pos < len(body):
        item = _LABEL.match(body, pos)
        if item is None:
            raise ValueError(f'cannot read the labels at {body[pos:]!r}; write label="value"')
        labels[item.group(1)] = item.group(2).replace('\\"', '"')
        pos = item.end()
    host = labels.pop("host", None)
    if not host:
        raise ValueError(f'{text!r} needs a host label, e.g. {{host="web-1"}}')
    return match.group(1), host, labels


@dataclass
class _Feed:
    """The parsed inputs of a test: what happens at each step."""

    samples: dict[int, dict[str, list[Sample]]]  # step → host → samples
    events: dict[int, dict[str, list[Event]]]
    agents: dict[int, list[tuple[str, Literal["online", "offline"]]]]
    steps: int


def _parse_inputs(test: RuleTest, path: str) -> _Feed:
    feed = _Feed({}, {}, {}, 0)
    for i, item in enumerate(test.input):
        where = f"tests[{test.name}].input[{i}]"
        given = [k for k in ("series", "events", "agent") if getattr(item, k) is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of series, events or agent", source=path, field=where)
        try:
            if item.agent is not None:
                tokens = item.values.split()
                statuses: list[str | None] = []
                for token in tokens:
                    name, _, count = token.partition("x")
                    if name not in ("online", "offline", "_") or (count and not count.isdigit()):
                        raise ValueError(f"cannot read {token!r}; write online, offline or _ (xN repeats)")
                    statuses.extend([None if name == "_" else name] * (int(count) if count else 1))
                for step, status in enumerate(statuses):
                    if status is not None:
                        feed.agents.setdefault(step, []).append((item.agent, status))  # type: ignore[arg-type]
                feed.steps = max(feed.steps, len(statuses))
                continue
            values = expand_values(item.values)
            name, host, labels = parse_series(item.series or item.events or "")
        except ValueError as exc:
            raise ConfigError(str(exc), source=path, field=where) from None
        for step, value in enumerate(values):
            if value is None:
                continue
            if item.series is not None:
                sample = Sample(name=name, value=value, labels=labels)
                feed.samples.setdefault(step, {}).setdefault(host, []).append(sample)
            else:
                if value < 0 or value != int(value):
                    raise ConfigError(
                        f"an event count must be a whole number, got {value:g}", source=path, field=where
                    )
                events = [Event(type=name, labels=labels) for _ in range(int(value))]
                feed.events.setdefault(step, {}).setdefault(host, []).extend(events)
        feed.steps = max(feed.steps, len(values))
    return feed


def run_test(engine: Engine, test: RuleTest, interval: float, tick: float, path: str) -> list[AlertEvent]:
    """Feed ``test``'s inputs through ``engine`` on a simulated clock; the events it emits."""
    feed = _parse_inputs(test, path)
    end = float(test.duration) if test.duration is not None else feed.steps * interval
    times: dict[int, int | None] = {}  # microseconds → step at that time (None: only a tick)
    for k in range(int(end / tick + 1e-9) + 1):
        times.setdefault(round(k * tick * 1e6), None)
    for index in range(feed.steps):
        if index * interval <= end:
            times[round(index * interval * 1e6)] = index
    events: list[AlertEvent] = []
    for micros in sorted(times):
        now = EPOCH + micros / 1e6
        step = times[micros]
        if step is not None:
            for host, samples in feed.samples.get(step, {}).items():
                batch = MetricBatch(
                    host=host, time=now, samples=samples, labels=test.host_labels.get(host, {})
                )
                events.extend(engine.metrics(batch, now).events)
            for host, occurred in feed.events.get(step, {}).items():
                labels = test.host_labels.get(host, {})
                events.extend(
                    engine.events(EventBatch(host=host, time=now, events=occurred, labels=labels), now).events
                )
            for host, status in feed.agents.get(step, []):
                labels = test.host_labels.get(host, {})
                events.extend(
                    engine.agent(AgentStatus(host=host, status=status, time=now, labels=labels), now).events
                )
        events.extend(engine.tick(now).events)
    return events


def _describe(event: AlertEvent | None, expected: Expected | None) -> str:
    """One line per event; an actual event shows the fields its expected counterpart names."""
    if expected is not None and event is None:
        data: dict[str, Any] = msgspec.to_builtins(expected, enc_hook=float)
        data["at"] = f"{float(expected.at):g}s"
    else:
        assert event is not None
        data = {
            "at": f"{event.time - EPOCH:g}s",
            "rule": event.rule,
            "status": event.status,
            "host": event.host,
        }
        if expected is not None:
            data = {"at": data["at"], "rule": event.rule, "status": event.status}
            for key in ("host", "severity", "value"):
                if getattr(expected, key) is not None:
                    data[key] = getattr(event, key)
            for key in ("labels", "annotations"):
                wanted = getattr(expected, key)
                if wanted is not None:
                    actual = getattr(event, key)
                    data[key] = {k: actual.get(k) for k in wanted}
    parts = []
    for key, value in data.items():
        if isinstance(value, float):
            text = f"{value:.10g}"
        elif isinstance(value, dict):
            text = msgspec.json.encode(value).decode()
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _matches(event: AlertEvent, expected: Expected) -> bool:
    if abs(event.time - EPOCH - float(expected.at)) > 1e-6:
        return False
    if (event.rule, event.status) != (expected.rule, expected.status):
        return False
    if expected.host is not None and event.host != expected.host:
        return False
    if expected.severity is not None and event.severity != expected.severity:
        return False
    if expected.value is not None and (
        event.value is None or not math.isclose(event.value, expected.value, rel_tol=1e-6, abs_tol=1e-9)
    ):
        return False
    for key in ("labels", "annotations"):
        wanted = getattr(expected, key)
        actual = getattr(event, key)
        if wanted is not None and any(actual.get(k) != v for k, v in wanted.items()):
            return False
    return True


def compare(actual: list[AlertEvent], expected: list[Expected]) -> list[str]:
    """A unified diff of expected against actual events; empty when they match."""
    if len(actual) == len(expected) and all(_matches(a, e) for a, e in zip(actual, expected, strict=True)):
        return []
    want = [_describe(None, e) for e in expected]
    got = [_describe(a, expected[i] if i < len(expected) else None) for i, a in enumerate(actual)]
    diff = list(difflib.unified_diff(want, got, "expected", "actual", lineterm="", n=len(want) + len(got)))
    return diff or ["events differ beyond the printed precision:", *got]


def run_file(path: str) -> list[Result]:
    """Run every test of a test file. Raises ``ConfigError`` for an invalid test or rule file."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read test file: {exc.strerror}", source=path) from None
    data, lines = parse_yaml(text, path)
    spec = convert(data, TestFile, source=path, lines=lines)
    rule_paths = [str(source.parent / name) for name in spec.rule_files]
    rules = load_rules(rule_paths)
    results: list[Result] = []
    for written in spec.tests:
        test = written
        interval = float(test.interval if test.interval is not None else spec.interval)
        if interval <= 0 or spec.tick <= 0:
            raise ConfigError("must be longer than 0s", source=path, field=f"tests[{test.name}].interval")
        if spec.host_labels:
            hosts = spec.host_labels.keys() | written.host_labels.keys()
            labels = {h: {**spec.host_labels.get(h, {}), **written.host_labels.get(h, {})} for h in hosts}
            test = msgspec.structs.replace(written, host_labels=labels)
        engine = Engine(rules)
        actual = run_test(engine, test, interval, float(spec.tick), path)
        if test.rules is not None:
            actual = [e for e in actual if e.rule in test.rules]
        results.append(Result(test.name, compare(actual, test.expect)))
    return results
