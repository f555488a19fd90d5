"""``signalfire notifier`` (the service), ``signalfire notify test CHANNEL``, ``notify heartbeat``,
``notify status`` and ``notify check``."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from signalfire.bus import connect, request_every
from signalfire.config import tool_environ
from signalfire.control import NOTIFIER_STATUS, NotifierStatus, read_statuses
from signalfire.events import SEVERITIES, AlertEvent, DeliveryResult
from signalfire.log import configure_logging
from signalfire.notifier import heartbeat
from signalfire.notifier.channels import ChannelContext, Notification, build_channel, channel_type
from signalfire.notifier.channels.base import DeliveryError
from signalfire.notifier.channels.http import new_session, quiet_url_loggers
from signalfire.notifier.config import check_notify_config, load_notify_config
from signalfire.notifier.delivery import RetryPolicy, deliver
from signalfire.notifier.service import NotifierService
from signalfire.runner import run_service, serve

log = logging.getLogger("signalfire.notifier")

CONFIG_HELP = "notify.yaml with channels and routes (default: settings from SF_* variables only)"
TOOL_CONFIG_HELP = (
    "notify.yaml with channels and routes (default: inside a repository where `make up` runs,"
    " the file it runs; else settings from SF_* variables only)"
)
#: Where ``make up`` names, in ``.signalfire/env``, the notify config it runs.
UP_NOTIFY_FILE = "SF_UP_NOTIFY_FILE"


def tool_config(given: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The notify config a ``notify`` tool reads: ``--config``, else the one ``make up`` runs
    for the repository the tool is run in (said on stderr), else none. ``environ``: the
    tool's variables when the caller has read them (:func:`~signalfire.config.tool_environ`)."""
    if given is not None:
        return given
    path = (tool_environ()[0] if environ is None else environ).get(UP_NOTIFY_FILE) or None
    if path is not None:
        print(
            f"notify: {path}, the notify config `make up` runs (--config FILE for another)", file=sys.stderr
        )
    return path


def register_service(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "notifier",
        help="run the notifier: deliver alert events through channels",
        description="Consume alert events from JetStream and deliver them through the channels "
        "their routes name.",
    )
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.set_defaults(handler=run_notifier)


def register_notify(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "notify",
        help="notification tools (notify test CHANNEL, notify heartbeat, notify status, notify check FILE)",
    )
    commands = parser.add_subparsers(dest="notify_command", metavar="COMMAND", required=True)
    test = commands.add_parser(
        "test",
        help="send a test notification through one channel",
        description="Send a test notification through CHANNEL directly (no NATS needed), with the "
        "channel's retries, and print each attempt. Exit status 1 when it was not delivered.",
    )
    test.add_argument("channel", metavar="CHANNEL", help="a channel name from the config")
    test.add_argument("--config", metavar="FILE", help=TOOL_CONFIG_HELP)
    test.add_argument("--severity", choices=SEVERITIES, default="low", help="severity of the test alert")
    test.set_defaults(handler=notify_test)
    beat = commands.add_parser(
        "heartbeat",
        help="send one heartbeat to the configured dead man's switch",
        description="Request the heartbeat URL of the config once (no NATS needed) and print the answer, "
        "to check the dead man's switch before relying on it. Exit status 1 when it was not taken.",
    )
    beat.add_argument("--config", metavar="FILE", help=TOOL_CONFIG_HELP)
    beat.set_defaults(handler=notify_heartbeat)
    status = commands.add_parser(
        "status",
        help="which notifier replicas run, with their channels",
        description="Ask every running notifier replica what it is (sf.control.notifier.status) and print "
        "them. Inside a repository where `make up` runs, its bus settings are used. Exit status 1 when "
        "none answers: firing alerts then notify nobody.",
    )
    status.add_argument("--config", metavar="FILE", help=TOOL_CONFIG_HELP)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=notify_status)
    check = commands.add_parser(
        "check",
        help="validate notify config files",
        description="Validate notify config files: every mistake is printed as file:line: field: reason "
        "(channels, routes, timing, and templates compiled and trial-rendered). Secrets are not read "
        "and SF_* variables not applied. Exit status 1 when a file has a mistake.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=notify_check)


def run_notifier(args: argparse.Namespace) -> int:
    async def main() -> None:
        config = load_notify_config(args.config)
        configure_logging("notifier", config.log_level, config.log_format)
        service = NotifierService(config, config_path=args.config)
        tune_gc()
        # SIGHUP: a broken file is reported and the running config kept
        await serve(service, on_reload=service.reload_on_signal)

    return run_service(main)


def tune_gc() -> None:
    """Collect garbage less often in the service process. Every alert allocates tasks,
    futures and messages by the hundred, so the default threshold (700 allocations) ran the
    collector thousands of times a second, each pass walking everything young; the startup
    objects (modules, config) are frozen out of the collector's walks altogether. Together
    about a sixth of the notifier's CPU at 1,000 alerts/s; memory stays bounded, since
    young garbage is still collected every 50,000 allocations."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def make_test_notification(severity: str) -> Notification:
    """A clearly labelled alert that exercises every field a channel renders."""
    now = time.time()
    host = socket.gethostname() or "localhost"
    alert = AlertEvent(
        id=f"test-{uuid.uuid4().hex}",
        fingerprint="signalfire-test",
        rule="SignalfireTestNotification",
        status="firing",
        severity=severity,  # type: ignore[arg-type]
        host=host,
        starts_at=now,
        time=now,
        labels={"test": "true"},
        annotations={
            "summary": f"Test notification from signalfire on {host}",
            "description": "Sent by `signalfire notify test`; nothing is wrong.",
        },
    )
    return Notification(alert=alert, test=True)


def notify_check(args: argparse.Namespace) -> int:
    """``signalfire notify check FILE...``: like ``signalfire rules check``."""
    failed = False
    for path in args.files:
        config, errors = check_notify_config(path)
        for error in errors:
            print(error, file=sys.stderr)
        if errors or config is None:
            failed = True
            continue
        print(f"ok: {path}: {len(config.channels)} channels, {len(config.routes)} routes")
    return 1 if failed else 0


def notify_status(args: argparse.Namespace) -> int:
    replicas: list[NotifierStatus] = []

    async def main() -> None:
        # inside a repository where `make up` runs, its .signalfire/env supplies the bus's
        # address and the admin's credentials the environment does not set
        environ = tool_environ()[0]
        config = load_notify_config(tool_config(args.config, environ), environ=environ)
        nc = await connect(config.nats, "signalfire-notify-status", max_reconnect_attempts=2)
        try:
            subject = config.nats.subjects.control("notifier", NOTIFIER_STATUS)
            found, unreadable = read_statuses(await request_every(nc, subject, timeout=2.0))
        finally:
            await nc.close()
        replicas.extend(found)
        for _ in range(unreadable):
            print("notify status: an answer that is not a notifier's status was skipped", file=sys.stderr)

    code = run_service(main)
    if code:
        return code
    if args.json:
        print(msgspec.json.encode({"notifiers": replicas}).decode())
    elif replicas:
        print(render_status(replicas))
    if not replicas:
        print("no notifier answers: firing alerts notify nobody", file=sys.stderr)
        return 1
    return 0


def render_status(replicas: list[NotifierStatus]) -> str:
    """The table ``notify status`` prints: a row per replica."""
    rows = [("replica", "host", "started", "channels", "routes", "in flight", "heartbeat")]
    for r in replicas:
        channels = (
            ", ".join(f"{name} ({kind})" for name, kind in r.channels.items()) or "none"
        )  # as configured
        beat = f"every {r.heartbeat_every:g}s, last {r.heartbeat_last or '-'}" if r.heartbeat_every else "off"
        if r.heartbeat_every and r.heartbeat_trouble:
            beat += f": {r.heartbeat_trouble}"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
        rows.append((r.replica, r.hostname, started, channels, str(r.routes), str(r.in_flight), beat))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def notify_heartbeat(args: argparse.Namespace) -> int:
    taken: list[bool] = []

    async def main() -> None:
        config = load_notify_config(tool_config(args.config))
        configure_logging("notify", config.log_level, config.log_format)
        target = heartbeat.target(config.heartbeat, os.environ)
        if target is None:
            print("signalfire: no heartbeat is configured (heartbeat: in the notify config)", file=sys.stderr)
            return
        quiet_url_loggers()
        async with new_session() as http:
            try:
                status = await heartbeat.ping(http, target)
            except DeliveryError as exc:
                print(f"the heartbeat was not taken: {exc}", file=sys.stderr)
                taken.append(False)
                return
        print(f"the heartbeat was taken (HTTP {status}); the notifier sends one every {target.every:g}s")
        taken.append(True)

    code = run_service(main)
    if code:
        return code
    if not taken:
        return 2
    return 0 if taken[0] else 1


def notify_test(args: argparse.Namespace) -> int:
    outcome: list[DeliveryResult] = []

    async def main() -> None:
        path = tool_config(args.config)
        config = load_notify_config(path)
        configure_logging("notify", config.log_level, config.log_format)
        settings = config.channels.get(args.channel)
        if settings is None:
            known = ", ".join(sorted(config.channels)) or "none"
            where = path or "no notify config given: --config FILE"
            print(
                f"signalfire: unknown channel {args.channel!r} (configured: {known}; {where})",
                file=sys.stderr,
            )
            return

        async def show(result: DeliveryResult) -> None:
            line = f"attempt {result.attempt}: {result.status}"
            print(line + (f": {result.error}" if result.error else ""), flush=True)

        quiet_url_loggers()
        async with new_session() as http:
            channel = build_channel(args.channel, settings, ChannelContext(http=http, environ=os.environ))
            result, _ = await deliver(
                channel, make_test_notification(args.severity), RetryPolicy.of(settings), show
            )
        outcome.append(result)
        kind = channel_type(settings)
        if result.status == "sent":
            print(f"sent a test notification through {args.channel} ({kind})")
        else:
            print(f"could not deliver through {args.channel} ({kind}): {result.error}", file=sys.stderr)

    code = run_service(main)
    if code:
        return code
    if not outcome:
        return 2
    return 0 if outcome[0].status == "sent" else 1
