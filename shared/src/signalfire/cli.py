"""The ``signalfire`` command. Subcommands come from installed distributions.

Each distribution registers its subcommands under the ``signalfire.commands`` entry-point
group as a function ``register(subparsers)`` that adds a parser whose ``handler`` default is
``handler(args) -> int``. An agent-only install therefore has ``signalfire agent`` and
nothing of the server side; this module never imports a service.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points, version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signalfire",
        description="Signalfire: event-driven monitoring and alerting over NATS.",
    )
    try:
        own_version = version("signalfire-shared")
    except Exception:
        own_version = "unknown"
    parser.add_argument("--version", action="version", version=f"signalfire {own_version}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group="signalfire.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:  # a half-installed distribution must not break the others
            print(f"signalfire: subcommand {entry.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
