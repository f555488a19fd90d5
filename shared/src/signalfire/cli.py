"""The ``signalfire`` command. Subcommands come from installed distributions.

Each distribution registers its subcommands under the ``signalfire.commands`` entry-point
group as a function ``register(subparsers)`` that adds a parser whose ``handler`` default is
``handler(args) -> int``. An agent-only install therefore has ``signalfire agent`` and
nothing of the server side; this module never imports a service. When the command line
names a subcommand, only the distribution module registering it is imported (the agent on
a production host must not carry the server side's libraries in memory); help and unknown
names load them all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points, version


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first argument not starting with ``-`` (the top-level
    parser has only flags without values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every installed subcommand, or, when ``command`` names an installed
    one, with that one alone."""
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
    entries = sorted(entry_points(group="signalfire.commands"), key=lambda e: e.name)
    if chosen := [entry for entry in entries if entry.name == command]:
        entries = chosen
    for entry in entries:
        try:
            register = entry.load()
        except ImportError as exc:  # a half-installed distribution must not break the others
            print(f"signalfire: subcommand {entry.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(arguments))
    args = parser.parse_args(arguments)
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
