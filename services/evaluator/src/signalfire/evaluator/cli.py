"""``signalfire evaluator`` and ``signalfire rules check``."""

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
        await serve(EvaluatorService(config))

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


def _check(args: argparse.Namespace) -> int:
    from signalfire.evaluator.rules import load_rules

    try:
        rules = load_rules(args.files)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ok: {len(rules)} rules")
    return 0
