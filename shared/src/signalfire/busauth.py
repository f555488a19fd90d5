"""``signalfire bus``: the bus credentials of one deployment, kept in one directory.

The directory (``.signalfire/bus`` under ``make up``; in production wherever nats-server reads
its config, e.g. ``/etc/nats/signalfire``) holds:

- ``users.json``: the subject prefix and every identity (role, host) with its bcrypt hash;
- ``auth.conf``: the ``accounts`` block rendered from it by :mod:`signalfire.buspolicy`,
  which the server config includes (``include ./auth.conf``);
- ``<name>.password``: the password of each service identity made by ``init``.

Every file is mode 0600 and no plaintext password is ever printed or logged; the server
config holds hashes only. ``enroll HOST`` adds (or re-issues) one agent's credential, writes
its password to a file for that host, renders ``auth.conf`` again and, given the server's PID,
makes nats-server reload its config (``SIGHUP``): the agent may connect a moment later, and a
re-issued or revoked credential stops working.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from signalfire.buspolicy import SERVICE_ROLES, User, render, user_name
from signalfire.subjects import Subjects

USERS_FILE = "users.json"
AUTH_FILE = "auth.conf"
#: bcrypt's cost: nats-server checks the hash once per connection (~50 ms at 11).
DEFAULT_ROUNDS = 11


class BusAuthError(RuntimeError):
    """A credential directory that cannot be used; the message says which file and what to do."""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def hash_password(password: str, rounds: int = DEFAULT_ROUNDS) -> str:
    """The bcrypt hash nats-server accepts in place of a password."""
    import bcrypt  # only the admin tool needs it, not every service's import

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def new_password() -> str:
    return secrets.token_urlsafe(32)


class CredentialDirectory:
    """The credentials of one deployment; see the module docstring for its files."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def auth_conf(self) -> Path:
        return self.path / AUTH_FILE

    def password_file(self, name: str) -> Path:
        return self.path / f"{name}.password"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one enroll at a time: each rewrites users.json
            yield
        finally:
            os.close(fd)

    def _load(self) -> tuple[str | None, dict[str, dict[str, Any]]]:
        file = self.path / USERS_FILE
        if not file.exists():
            return None, {}
        try:
            data = json.loads(file.read_text())
            return str(data["prefix"]), dict(data["users"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BusAuthError(f"{file}: not a Signalfire bus credential file ({exc})") from None

    def _save(self, prefix: str, users: dict[str, dict[str, Any]]) -> None:
        _write_private(self.path / USERS_FILE, json.dumps({"prefix": prefix, "users": users}, indent=2))
        roster = [
            User(name=name, role=u["role"], host=u.get("host"), password=u["bcrypt"])
            for name, u in users.items()
        ]
        _write_private(self.auth_conf, render(Subjects(prefix), roster))

    def prefix(self) -> str:
        prefix, _ = self._load()
        if prefix is None:
            raise BusAuthError(f"{self.path}: no {USERS_FILE}; run `signalfire bus init {self.path}` first")
        return prefix

    def init(self, prefix: str = "sf", rounds: int = DEFAULT_ROUNDS) -> list[str]:
        """Create the admin and service identities that do not exist yet (their passwords in
        ``<name>.password``) and render ``auth.conf``. Returns the names created; running it
        again keeps every existing credential."""
        Subjects(prefix)  # a bad prefix fails before anything is written
        with self._locked():
            stored, users = self._load()
            if stored is not None and stored != prefix:
                raise BusAuthError(f"{self.path} holds credentials for prefix {stored!r}, not {prefix!r}")
            created = []
            for role in SERVICE_ROLES:
                name = user_name(role)
                if name in users and self.password_file(name).exists():
                    continue
                password = new_password()
                _write_private(self.password_file(name), password + "\n")
                users[name] = {"role": role, "bcrypt": hash_password(password, rounds)}
                created.append(name)
            self._save(prefix, users)
            return created

    def enroll(self, host: str, out: Path, rounds: int = DEFAULT_ROUNDS) -> str:
        """Issue ``host``'s agent credential: its password goes to ``out`` (mode 0600), its hash
        into ``auth.conf``. An earlier credential of the host stops working. Returns the user."""
        with self._locked():
            prefix, users = self._load()
            if prefix is None:
                raise BusAuthError(
                    f"{self.path}: no {USERS_FILE}; run `signalfire bus init {self.path}` first"
                )
            name = user_name("agent", host)
            password = new_password()
            _write_private(out, password + "\n")
            users[name] = {"role": "agent", "host": host, "bcrypt": hash_password(password, rounds)}
            self._save(prefix, users)
            return name

    def revoke(self, host: str) -> bool:
        """Remove ``host``'s agent credential; False when it had none."""
        with self._locked():
            prefix, users = self._load()
            name = user_name("agent", host)
            if prefix is None or name not in users:
                return False
            del users[name]
            self._save(prefix, users)
            return True

    def agents(self) -> list[str]:
        """The hosts enrolled, sorted."""
        _, users = self._load()
        return sorted(u["host"] for u in users.values() if u["role"] == "agent")


def reload_server(pid: int) -> None:
    """Make nats-server read its config again (``SIGHUP``), so new credentials take effect."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BusAuthError(
            f"no nats-server with PID {pid}: reload it yourself (nats-server --signal reload)"
        ) from None


def _pid(args: argparse.Namespace) -> int | None:
    if args.pid is not None:
        return int(args.pid)
    if args.pid_file:
        try:
            return int(Path(args.pid_file).read_text().strip())
        except (OSError, ValueError) as exc:
            raise BusAuthError(f"{args.pid_file}: cannot read nats-server's PID ({exc})") from None
    return None


def _reload(args: argparse.Namespace) -> None:
    pid = _pid(args)
    if pid is None:
        print("reload nats-server for this to take effect: nats-server --signal reload", file=sys.stderr)
        return
    reload_server(pid)
    print(f"reloaded nats-server (PID {pid})")


def register(subparsers: Any) -> None:
    """``signalfire bus init|enroll|revoke|agents|render``."""
    parser = subparsers.add_parser(
        "bus",
        help="bus credentials: create service identities, enroll agents (admin tool)",
        description="Manage the NATS identities of a deployment (docs/security.md). Run it where "
        "nats-server's config lives; it writes auth.conf for the server to include.",
    )
    default_dir = os.environ.get("SF_BUS_DIR", ".signalfire/bus")
    commands = parser.add_subparsers(dest="bus_command", metavar="COMMAND", required=True)

    def with_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dir", default=default_dir, help=f"credential directory (default {default_dir}, SF_BUS_DIR)"
        )

    def with_reload(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--pid", type=int, help="nats-server's PID, to reload its config")
        group.add_argument("--pid-file", help="nats-server's pid_file, to reload its config")

    init = commands.add_parser("init", help="create the admin and service identities and auth.conf")
    with_dir(init)
    init.add_argument("--prefix", default="sf", help="subject prefix (default sf)")
    init.set_defaults(handler=_run_init)

    enroll = commands.add_parser("enroll", help="issue an agent's credential for HOST")
    enroll.add_argument("host", metavar="HOST", help="the host name the agent reports (its `host` setting)")
    with_dir(enroll)
    enroll.add_argument(
        "--out", help="where to write the agent's password (default <dir>/agent-<host>.password)"
    )
    with_reload(enroll)
    enroll.set_defaults(handler=_run_enroll)

    revoke = commands.add_parser("revoke", help="remove HOST's agent credential")
    revoke.add_argument("host", metavar="HOST")
    with_dir(revoke)
    with_reload(revoke)
    revoke.set_defaults(handler=_run_revoke)

    agents = commands.add_parser("agents", help="list the enrolled hosts")
    with_dir(agents)
    agents.set_defaults(handler=_run_agents)

    env = commands.add_parser(
        "render-env",
        help="print an accounts block whose passwords come from environment variables (compose)",
    )
    env.add_argument("--prefix", default="sf")
    env.add_argument("--agent", action="append", default=[], metavar="HOST", help="an agent identity to add")
    env.set_defaults(handler=_run_render_env)


def env_users(agents: list[str]) -> list[User]:
    """Identities whose passwords nats-server reads from ``SF_NATS_<NAME>_PASSWORD`` variables."""
    users = [
        User(name=role, role=role, password=f"SF_NATS_{role.upper()}_PASSWORD", from_env=True)
        for role in SERVICE_ROLES
    ]
    for host in agents:
        name = user_name("agent", host)
        variable = "SF_NATS_" + name.upper().replace("-", "_") + "_PASSWORD"
        users.append(User(name=name, role="agent", host=host, password=variable, from_env=True))
    return users


def _fail(exc: Exception) -> int:
    print(f"signalfire bus: {exc}", file=sys.stderr)
    return 1


def _run_init(args: argparse.Namespace) -> int:
    directory = CredentialDirectory(args.dir)
    try:
        created = directory.init(args.prefix)
    except (BusAuthError, ValueError) as exc:
        return _fail(exc)
    for name in created:
        print(f"created identity {name}: password in {directory.password_file(name)}")
    print(f"server config: include {directory.auth_conf}")
    return 0


def _run_enroll(args: argparse.Namespace) -> int:
    directory = CredentialDirectory(args.dir)
    out = Path(args.out) if args.out else directory.password_file(user_name("agent", args.host))
    try:
        name = directory.enroll(args.host, out)
        print(f"enrolled {args.host} as NATS user {name}; its password is in {out} (mode 0600)")
        print("copy that file to the host and set in its agent.yaml:")
        print(f"  hostname: {args.host}\n  nats:\n    user: {name}")
        print("    password_file: /etc/signalfire/nats-password")
        _reload(args)
    except BusAuthError as exc:
        return _fail(exc)
    return 0


def _run_revoke(args: argparse.Namespace) -> int:
    directory = CredentialDirectory(args.dir)
    try:
        if not directory.revoke(args.host):
            return _fail(BusAuthError(f"{args.host} is not enrolled in {args.dir}"))
        print(f"revoked {args.host}")
        _reload(args)
    except BusAuthError as exc:
        return _fail(exc)
    return 0


def _run_agents(args: argparse.Namespace) -> int:
    try:
        for host in CredentialDirectory(args.dir).agents():
            print(host)
    except BusAuthError as exc:
        return _fail(exc)
    return 0


def _run_render_env(args: argparse.Namespace) -> int:
    sys.stdout.write(render(Subjects(args.prefix), env_users(args.agent)))
    return 0
