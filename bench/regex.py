"""User regexes: RE2 through ``signalfire.regex.compile_regex`` against Python's ``re``.

Every pattern a user writes (rule matchers, silences, routes, the agent's checks) is compiled
with RE2, which matches in time linear in the text whatever the pattern. This measures what
that costs and what it buys, with Python's ``re`` as the reference in the same run:

1. **Ordinary patterns** of rules, silences and checks on realistic values, each pattern with
   the method its site uses (``search`` or ``fullmatch``): nanoseconds per match over
   ``--values`` distinct values (more than the per-pattern result cache holds, so every call
   reaches RE2), and over 20 values repeated (label values repeat: the cache answers). The
   best of ``--rounds`` passes, the two engines alternating; their answers must agree.
2. **Catastrophic backtracking**: ``(a+)+$`` against ``"a" * n + "b"`` (the silence that froze
   the notifier), with ``fullmatch`` as silences use it. Python's ``re`` takes time exponential
   in ``n``; each of its measurements runs in a subprocess killed after ``--limit`` seconds
   ("> limit"; larger ``n`` are then not tried). RE2's is the first match of a freshly
   compiled pattern (no cached result), for ``n`` up to 10,000.

    uv run python bench/regex.py [--values 10000] [--rounds 5] [--limit 10]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from signalfire.regex import compile_regex

CATASTROPHIC = r"(a+)+$"
#: Times one Python ``re.fullmatch`` of CATASTROPHIC against "a" * n + "b" in a child process;
#: repeats while the calls are quick, prints the median in ns.
_PYTHON_CHILD = """
import re, statistics, sys, time
n = int(sys.argv[1])
pattern, text = re.compile(sys.argv[2]), "a" * n + "b"
times = []
while not times or (sum(times) < 0.2e9 and len(times) < 1000):
    start = time.perf_counter_ns()
    assert pattern.fullmatch(text) is None
    times.append(time.perf_counter_ns() - start)
print(statistics.median(times))
"""


@dataclass(frozen=True)
class Case:
    """One ordinary pattern, the method its site uses, and how to make realistic values."""

    site: str
    pattern: str
    method: str  # "search" or "fullmatch"
    value: Callable[[random.Random, int], str]


def _host(rng: random.Random, i: int) -> str:
    role = rng.choice(["web", "web", "api", "db", "cache", "worker"])
    return f"{role}-{i}" + rng.choice(["", "", ".eu-west-1", ".prod"])


def _fqdn(rng: random.Random, i: int) -> str:
    domain = rng.choice(["example.com", "example.com", "eu.example.com", "example.org", "corp.internal"])
    return f"{rng.choice(['web', 'db', 'api'])}-{i}.{domain}"


def _environment(rng: random.Random, i: int) -> str:
    env = rng.choice(["prod", "staging", "dev", "qa", "canary"])
    return env if rng.random() < 0.5 else f"{env}-{i}"


def _device(rng: random.Random, i: int) -> str:
    return rng.choice([f"loop{i}", f"ram{i}", f"sd{chr(97 + i % 26)}{i}", f"nvme{i}n1"])


def _log_line(rng: random.Random, i: int) -> str:
    level = rng.choices(["INFO", "DEBUG", "WARN", "ERROR", "Fatal"], [70, 15, 10, 4, 1])[0]
    return (
        f"2026-12-02T04:{i % 60:02d}:{i % 57:02d}Z {level} GET /api/v1/items/{i} "
        f"status={rng.choice([200, 200, 304, 404, 500])} in {rng.randint(1, 900)}ms user={i % 97}"
    )


def _body(rng: random.Random, i: int) -> str:
    status = "ok" if rng.random() < 0.9 else "degraded"
    items = ", ".join(f'{{"id": {i + k}, "name": "item {k}"}}' for k in range(40))
    return f'{{"service": "api-{i}", "items": [{items}], "status": "{status}"}}'


CASES = [
    Case("rule where host", r"web-\d+", "search", _host),
    Case("selector env", r"prod|staging", "fullmatch", _environment),
    Case("silence host", r".*\.example\.com", "fullmatch", _fqdn),
    Case("disk exclude", r"^(loop|ram)\d+$", "search", _device),
    Case("log line", r"(?i)\b(error|fatal|panic)\b", "search", _log_line),
    Case("http body_match (~1.5 KB)", r'"status":\s*"ok"', "search", _body),
]


def _per_match(test: Callable[[str], object], values: list[str]) -> float:
    start = time.perf_counter_ns()
    for value in values:
        test(value)
    return (time.perf_counter_ns() - start) / len(values)


def ordinary(values: int, rounds: int) -> None:
    """Print ns per match for each case: RE2 (signalfire) and ``re``, distinct and repeated values."""
    print(f"ordinary patterns: ns per match, best of {rounds} passes")
    print(f"{'site':28}{'pattern':28}{'method':>10}{'values':>9}{'RE2':>9}{'re':>9}{'RE2/re':>8}")
    for case in CASES:
        rng = random.Random(7)
        distinct = [case.value(rng, i) for i in range(values)]
        repeated = [distinct[i % 20] for i in range(values)]
        ours = getattr(compile_regex(case.pattern), case.method)
        theirs = getattr(re.compile(case.pattern), case.method)
        mismatched = [v for v in distinct if bool(ours(v)) != (theirs(v) is not None)]
        if mismatched:
            raise SystemExit(f"{case.pattern!r}: RE2 and re disagree on {mismatched[0]!r}")
        matched = sum(theirs(v) is not None for v in distinct)
        for label, batch in ((f"{values:,}", distinct), ("20 rep.", repeated)):
            best_ours, best_theirs = float("inf"), float("inf")
            for _ in range(rounds):
                best_ours = min(best_ours, _per_match(ours, batch))
                best_theirs = min(best_theirs, _per_match(theirs, batch))
            print(
                f"{case.site:28}{case.pattern:28}{case.method:>10}{label:>9}"
                f"{best_ours:>9.0f}{best_theirs:>9.0f}{best_ours / best_theirs:>7.2f}x"
            )
        length = statistics.fmean(len(v) for v in distinct)
        print(f"{'':28}(values {length:.0f} chars on average, {matched / len(distinct):.0%} match)")


def python_time(n: int, limit: float) -> float | None:
    """Median ns of one ``re.fullmatch`` of CATASTROPHIC on ``"a" * n + "b"``, or None past ``limit`` s."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PYTHON_CHILD, str(n), CATASTROPHIC],
            capture_output=True,
            text=True,
            timeout=limit,
            check=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.TimeoutExpired:
        return None
    return float(done.stdout)


def re2_time(n: int, repeat: int) -> float:
    """Median ns of the first ``fullmatch`` of a freshly compiled CATASTROPHIC on ``"a" * n + "b"``."""
    text = "a" * n + "b"
    times = []
    for _ in range(repeat):
        fresh = compile_regex(CATASTROPHIC)  # a new pattern has no cached results
        start = time.perf_counter_ns()
        if fresh.fullmatch(text):
            raise SystemExit("RE2 matched a text that ends in 'b'")
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times)


def _duration(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.1f} us"


def catastrophic(python_ns: list[int], re2_ns: list[int], limit: float, repeat: int) -> None:
    """Print the table of Python ``re`` and RE2 times for CATASTROPHIC, with ratios."""
    print(f"\ncatastrophic: {CATASTROPHIC!r}.fullmatch('a' * n + 'b'); Python re limited to {limit:g} s")
    print(f"{'n':>7}{'Python re':>14}{'RE2':>12}{'RE2 ns/char':>13}{'re/RE2':>12}")
    measured: dict[int, float] = {}
    skipped = False  # once a length passes the limit, longer ones would too
    for n in sorted(set(python_ns) | set(re2_ns)):
        theirs: float | None = None
        if n in python_ns and not skipped:
            theirs = python_time(n, limit)
            skipped = theirs is None
            if theirs is not None:
                measured[n] = theirs
        ours = re2_time(n, repeat) if n in re2_ns else None
        shown_theirs = "-" if n not in python_ns else _duration(theirs) if theirs else f"> {limit:g} s"
        shown_ours = _duration(ours) if ours is not None else "-"
        per_char = f"{ours / (n + 1):.0f}" if ours is not None else "-"
        ratio = f"{theirs / ours:,.0f}x" if theirs is not None and ours is not None else "-"
        print(f"{n:>7}{shown_theirs:>14}{shown_ours:>12}{per_char:>13}{ratio:>12}")
    if len(measured) >= 2:
        (n0, t0), (n1, t1) = sorted(measured.items())[-2:]
        print(f"Python re: x{(t1 / t0) ** (1 / (n1 - n0)):.2f} per added 'a' (n = {n0} -> {n1})")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--values", type=int, default=10_000, help="distinct values per ordinary pattern")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the values; the best is shown")
    parser.add_argument("--limit", type=float, default=10.0, help="seconds allowed per Python re measurement")
    parser.add_argument(
        "--python-n",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10, 15, 20, 22, 24, 26, 28],
        help="lengths n tried with Python re (comma-separated)",
    )
    parser.add_argument(
        "--re2-n",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10, 15, 20, 22, 24, 26, 28, 100, 1000, 10_000],
        help="lengths n tried with RE2 (comma-separated)",
    )
    parser.add_argument("--repeat", type=int, default=21, help="RE2 measurements per n (the median is shown)")
    args = parser.parse_args()
    print(f"load average {_load()}; {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    ordinary(args.values, args.rounds)
    catastrophic(args.python_n, args.re2_n, args.limit, args.repeat)
    print(f"load average at the end {_load()}")


if __name__ == "__main__":
    main()
