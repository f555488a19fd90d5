"""``signalfire evaluator``, ``signalfire rules check`` and ``signalfire rules test``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from signalfire.config import ConfigError, load_config
from signalfire.log import configure_logging
from signalfire.runner import run_service, serve


def register_service(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "evaluator",
        help="run the rule evaluator",
        description="Evaluate alert rules on the metric stream and publish alert events.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (SF_* variables override it)")
    parser.set_defaults(handler=_run_evaluator)


def _run_evaluator(args: argparse.Namespace) -> int:
    from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService

    async def main() -> None:
        config = load_config(EvaluatorConfig, args.config)
        configure_logging("evaluator", config.log_level, config.log_format)
        service = EvaluatorService(config)
        await serve(service, on_reload=service.reload_on_signal)

    return run_service(main)


def register_rules(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "rules", help="validate alert rule files", description="Work with alert rule files."
    )
    commands = parser.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="validate rule files",
        description="Validate rule files, directories or globs; prints every error as file:line: field.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=_check)
    test = commands.add_parser(
        "test",
        help="run rule unit tests",
        description="Run rule unit tests (input series, expected alert events; format in docs/rules.md). "
        "Exits 1 with a diff when an alert differs.",
    )
    test.add_argument("files", nargs="+", metavar="FILE")
    test.set_defaults(handler=_test)


def _check(args: argparse.Namespace) -> int:
    from signalfire.evaluator.rules import load_rules

    try:
        rules = load_rules(args.files)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ok: {len(rules)} rules")
    return 0


def _test(args: argparse.Namespace) -> int:
    from signalfire.evaluator.ruletests import run_file

    failed = 0
    total = 0
    for path in args.files:
        try:
            results = run_file(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        for result in results:
            total += 1
            if result.passed:
                continue
            failed += 1
            print(f"FAIL {path}: {result.name}", file=sys.stderr)
            for line in result.diff:
                print(f"  {line}", file=sys.stderr)
    if failed:
        print(f"{failed} of {total} tests failed" if total else "no tests ran", file=sys.stderr)
        return 1
    print(f"ok: {total} tests")
    return 0
