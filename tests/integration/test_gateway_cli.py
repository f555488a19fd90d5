"""``signalfire token`` and the database errors of the gateway's tools, as an operator sees them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack import free_port, write_tool_env

from tests.integration.gateway_support import run_cli


def test_token_list_and_revoke(database_url: str) -> None:
    for name, role in (("grafana", "viewer"), ("deploy-bot", "operator")):
        created = run_cli(database_url, "token", "create", "--name", name, "--role", role)
        assert created.returncode == 0, created.stderr
    listed = run_cli(database_url, "token", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "ROLE", "STATE", "NAME"]
    ids = {row.split()[3]: int(row.split()[0]) for row in rows}
    assert set(ids) >= {"grafana", "deploy-bot"}

    revoked = run_cli(database_url, "token", "revoke", str(ids["grafana"]))
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked token {ids['grafana']}\n")
    states = {
        row.split()[3]: row.split()[1:3]
        for row in run_cli(database_url, "token", "list").stdout.splitlines()[1:]
    }
    assert states["grafana"] == ["viewer", "revoked"]
    assert states["deploy-bot"] == ["operator", "active"]


def test_token_mistakes_are_one_line_errors(database_url: str) -> None:
    unknown = run_cli(database_url, "token", "revoke", "999999")
    assert (unknown.returncode, unknown.stderr) == (1, "signalfire: no token with id 999999\n")
    not_an_id = run_cli(database_url, "token", "revoke", "0")
    assert (not_an_id.returncode, not_an_id.stderr) == (
        2,
        "signalfire: the token id must be a positive number\n",
    )
    nameless = run_cli(database_url, "token", "create", "--name", "  ", "--role", "viewer")
    assert (nameless.returncode, nameless.stderr) == (2, "signalfire: --name must not be empty\n")


def _unreachable(tmp_path: Path, *args: str) -> str:
    """stderr of ``signalfire ARGS...`` run in ``tmp_path`` with no SF_DATABASE_URL set."""
    env = {k: v for k, v in os.environ.items() if k != "SF_DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "signalfire.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    return result.stderr


def test_an_unreachable_database_names_the_file_its_address_came_from(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"database_url: postgresql://sf@127.0.0.1:{free_port()}/signalfire\n")
    stderr = _unreachable(tmp_path, "token", "list", "--config", str(config))
    assert f"(database_url in {config})" in stderr

    # Inside a repository whose `make up` has stopped, its leftover settings are what was tried.
    (tmp_path / ".signalfire").mkdir()
    stack_env = tmp_path / ".signalfire" / "env"
    write_tool_env(stack_env, {"SF_DATABASE_URL": f"postgresql://sf@127.0.0.1:{free_port()}/signalfire"})
    for command in (["db", "migrate"], ["token", "revoke", "5"]):
        stderr = _unreachable(tmp_path, *command)
        assert f"({stack_env}, written by `make up` (is it still running?))" in stderr


def test_an_id_beyond_the_databases_range_is_a_one_line_error(database_url: str) -> None:
    result = run_cli(database_url, "token", "revoke", str(2**64))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("signalfire: database error: ")
    assert "out of int64 range" in line
