"""``signalfire gateway``, ``signalfire db migrate`` and ``signalfire token create``."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec

from signalfire.config import ConfigError, load_config, read_env_file, tool_environ
from signalfire.gateway.auth import ROLES, create_token, list_tokens, revoke_token
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.migrate import migrate, schema_version
from signalfire.log import configure_logging
from signalfire.runner import run_service, serve


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="gateway YAML config (optional; SF_* environment variables override it)",
    )


def _run(main: Callable[[], Awaitable[None]]) -> int:
    """Like :func:`run_service`, plus database errors as one-line messages."""

    async def guarded() -> None:
        try:
            await main()
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise OSError(f"database error: {exc}") from None

    return run_service(guarded)


def _load(args: argparse.Namespace) -> GatewayConfig:
    return load_config(GatewayConfig, args.config)


def _load_tool(args: argparse.Namespace) -> tuple[GatewayConfig, Path | None]:
    """The config of a tool command: like the service's, and inside a repository where
    ``make up`` runs, its ``.signalfire/env`` fills in what the environment does not set
    (returned too, for the messages)."""
    environ, stack_env = tool_environ()
    return load_config(GatewayConfig, args.config, environ=environ), stack_env


async def _connect(args: argparse.Namespace) -> asyncpg.Connection:
    """A connection to the configured database, or an ``OSError`` saying which database it
    tried and what to set."""
    config, stack_env = _load_tool(args)
    url = config.database_url
    try:
        return await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if os.environ.get("SF_DATABASE_URL"):
            source = "SF_DATABASE_URL"
        elif stack_env is not None and "SF_DATABASE_URL" in read_env_file(stack_env):
            source = f"{stack_env}, written by `make up` (is it still running?)"
        elif args.config:
            source = f"database_url in {args.config}"
        else:
            source = "the default"
        raise OSError(
            f"cannot connect to the database {_without_password(url)} ({source}): "
            f"{str(exc) or type(exc).__name__}. Set SF_DATABASE_URL to your PostgreSQL "
            "(postgresql://user:password@host:port/database); inside the repository, a "
            "running `make up` (PostgreSQL on 127.0.0.1:15432) is found without it"
        ) from None


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def register_gateway(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="store metrics and alerts in the database and serve the API",
        description="Run the gateway: ingest from NATS into PostgreSQL/TimescaleDB, serve the REST API.",
    )
    _add_config(parser)
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="ingest in N worker processes while this one serves the API "
        "(overrides ingest_workers / SF_INGEST_WORKERS; 0: ingest in this process)",
    )
    parser.set_defaults(handler=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    async def main() -> None:
        from signalfire.gateway.service import GatewayService

        config = _load(args)
        if args.workers is not None:
            try:
                config = msgspec.structs.replace(config, ingest_workers=args.workers)
                config.__post_init__()
            except ValueError as exc:
                raise ConfigError(f"--workers: {exc}") from None
        configure_logging("gateway", config.log_level, config.log_format)
        service = GatewayService(config)
        tune_gc()
        await serve(service)

    return _run(main)


def tune_gc() -> None:
    """Collect garbage less often in the gateway process. Ingest allocates a handful of
    objects per sample (decoded samples, series keys, rollup groups), so the default
    threshold (700 allocations) ran the collector many times per batch, each pass walking
    everything young — the held rollup backlog included; the start-up objects (modules,
    config) are frozen out of the collector's walks altogether. Young garbage is still
    collected every 50,000 allocations."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def register_db(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="database maintenance", description="Database maintenance.")
    commands = parser.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    migrate_parser = commands.add_parser(
        "migrate", help="apply pending schema migrations", description="Apply pending schema migrations."
    )
    _add_config(migrate_parser)
    migrate_parser.set_defaults(handler=_db_migrate)


def _db_migrate(args: argparse.Namespace) -> int:
    async def main() -> None:
        conn = await _connect(args)
        try:
            applied = await migrate(conn)
            version = await schema_version(conn)
        finally:
            await conn.close()
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
        print(f"schema version {version}" + ("" if applied else " (already up to date)"))

    return _run(main)


def register_token(subparsers: Any) -> None:
    parser = subparsers.add_parser("token", help="API tokens", description="Manage API tokens.")
    commands = parser.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = commands.add_parser(
        "create",
        help="create an API token and print it",
        description="Create an API token and print it. It is stored only as a hash: keep the printed copy.",
    )
    create.add_argument("--name", required=True, help="who or what uses the token")
    create.add_argument(
        "--role", required=True, choices=ROLES, help="viewer reads; operator acts; admin manages"
    )
    _add_config(create)
    create.set_defaults(handler=_token_create)
    listing = commands.add_parser(
        "list", help="list API tokens", description="List API tokens (id, name, role, state)."
    )
    _add_config(listing)
    listing.set_defaults(handler=_token_list)
    revoke = commands.add_parser(
        "revoke", help="revoke an API token", description="Revoke an API token by id."
    )
    revoke.add_argument("id", type=int, help="the token's id (see signalfire token list)")
    _add_config(revoke)
    revoke.set_defaults(handler=_token_revoke)


def _token_create(args: argparse.Namespace) -> int:
    if not args.name.strip():
        print("signalfire: --name must not be empty", file=sys.stderr)
        return 2

    async def main() -> None:
        conn = await _connect(args)
        try:
            await migrate(conn)
            token = await create_token(conn, args.name, args.role)
        finally:
            await conn.close()
        print(token)

    return _run(main)


def _token_list(args: argparse.Namespace) -> int:
    async def main() -> None:
        conn = await _connect(args)
        try:
            await migrate(conn)
            tokens = await list_tokens(conn)
        finally:
            await conn.close()
        print(f"{'ID':>5}  {'ROLE':<9} {'STATE':<8} NAME")
        for token in tokens:
            state = "revoked" if token["revoked_at"] is not None else "active"
            print(f"{token['id']:>5}  {token['role']!s:<9} {state:<8} {token['name']}")

    return _run(main)


def _token_revoke(args: argparse.Namespace) -> int:
    if args.id < 1:
        print("signalfire: the token id must be a positive number", file=sys.stderr)
        return 2
    outcome: list[float | None] = []

    async def main() -> None:
        conn = await _connect(args)
        try:
            await migrate(conn)
            outcome.append(await revoke_token(conn, args.id))
        finally:
            await conn.close()

    code = _run(main)
    if code != 0:
        return code
    if outcome[0] is None:
        print(f"signalfire: no token with id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked token {args.id}")
    return 0
