"""``signalfire evaluator``, ``signalfire rules check`` and ``signalfire rules test``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from signalfire.config import ConfigError, load_config, tool_environ
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
    commands = parser.add_subparsers(dest="evaluator_command", metavar="COMMAND")
    status = commands.add_parser(
        "status",
        help="show which evaluator replica judges which partitions",
        description="Read the evaluator_leases KV bucket (with the NATS settings of --config or SF_* "
        "variables; the admin or evaluator identity) and print each replica's partitions, the age of "
        "its oldest lease and of its announcement, and the partitions no replica holds.",
    )
    status.add_argument("--config", metavar="FILE", help="YAML config file (SF_* variables override it)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=_status)


def _run_evaluator(args: argparse.Namespace) -> int:
    from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService

    async def main() -> None:
        config = load_config(EvaluatorConfig, args.config)
        configure_logging("evaluator", config.log_level, config.log_format)
        service = EvaluatorService(config)
        await serve(service, on_reload=service.reload_on_signal)

    return run_service(main)


def _status(args: argparse.Namespace) -> int:
    import asyncio
    import time

    import msgspec

    from signalfire.bus import connect
    from signalfire.evaluator.leases import read_bucket
    from signalfire.evaluator.service import EvaluatorConfig
    from signalfire.evaluator.status import ownership, render

    async def main() -> dict[str, Any]:
        # Inside a repository where `make up` runs, its .signalfire/env supplies the bus's
        # address and the admin's credentials the environment does not set.
        config = load_config(EvaluatorConfig, args.config, environ=tool_environ()[0])
        nc = await connect(config.nats, "signalfire-evaluator-status", max_reconnect_attempts=2)
        try:
            kv = await nc.jetstream().key_value(config.nats.subjects.bucket("evaluator_leases"))
            return ownership(await read_bucket(kv), time.time())
        finally:
            await nc.close()

    try:
        status = asyncio.run(main())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # unreachable NATS, no bucket (no evaluator ever ran), no right
        print(f"evaluator status: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(status).decode() if args.json else render(status))
    return 0


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
