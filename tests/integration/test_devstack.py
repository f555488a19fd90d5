"""The dev servers themselves: what `make up` and every integration test stand on."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats.errors
import pytest
from devstack import (
    REPO,
    RESTART_BACKOFF,
    DevStackError,
    ServiceProcess,
    Stack,
    bus_env,
    free_port,
    machine_memory,
    memory_settings,
    private_postgres,
    stack,
)

from signalfire.bus import NatsConfig, connect
from tests.support.cli import signalfire_cli


async def test_nats_server_has_jetstream(nats_server) -> None:
    nc = await connect(NatsConfig(url=nats_server.url), "pytest")
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


async def test_postgres_has_timescaledb(postgres, database_url) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        license_ = await conn.fetchval("SHOW timescaledb.license")
    finally:
        await conn.close()
    assert version == "2.19.3"
    assert license_ == "apache"


def test_the_stacks_postgres_caches_a_quarter_of_the_machines_memory_as_the_compose_image_does() -> None:
    # The samples index keeps a page per series hot: the 256 MB test servers keep would make the
    # stack's PostgreSQL reread its index every ingest round past ~30,000 series.
    gib = 1 << 30
    assert memory_settings(24 * gib) == {"shared_buffers": "6144MB", "effective_cache_size": "18432MB"}
    assert memory_settings(256 << 20)["shared_buffers"] == "128MB"  # PostgreSQL's own default, at least
    with private_postgres(durable=True) as server:
        shown = server.psql("SHOW shared_buffers")
    assert shown == f"{machine_memory() // 4 >> 20}MB" or shown == f"{machine_memory() // 4 >> 30}GB"
    with private_postgres() as test_server:
        assert test_server.psql("SHOW shared_buffers") == "256MB"


# `make up` with a person's own files, and a stack that keeps running -----------------------------

OWN_RULES = """
rules:
  - name: MyOwnDiskRule
    metric: disk.used_percent
    condition: "> 99"
    severity: low
"""

OWN_NOTIFY = """
channels:
  mine:
    type: log
routes:
  - match: {severity: critical}
    channels: [mine]
"""


def test_restart_delay_doubles_to_a_cap_and_starts_over_after_a_stable_run() -> None:
    backoff = RESTART_BACKOFF
    delays: list[float] = []
    previous: float | None = None
    for _ in range(7):  # crashing right after each start
        previous = backoff.delay(previous, uptime=2)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(30, uptime=61) == 1  # it ran a minute: the next crash is news


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path, Path]]:
    """One supervised stack (as `make up` runs it) with a person's own rules and notify files."""
    root = tmp_path_factory.mktemp("own-files")
    rules, notify = root / "my-rules.yaml", root / "my-notify.yaml"
    rules.write_text(OWN_RULES)
    notify.write_text(OWN_NOTIFY)
    state = root / "state"
    try:
        with stack(
            state,
            free_port(),
            free_port(),
            free_port(),
            agent=False,
            rules=[rules],
            notify_config=notify,
            durable=False,
            supervise=True,
        ) as running:
            yield running, rules, notify
    finally:
        _remove_postgres(state)


def _remove_postgres(state: Path) -> None:
    """The stack's PostgreSQL directory, which is the postgres user's outside the test's tree
    (``state/pg`` links to it), and its log."""
    pg = state / "pg"
    if pg.is_symlink():
        shutil.rmtree(pg.resolve(), ignore_errors=True)
        pg.resolve().with_suffix(".log").unlink(missing_ok=True)


def _get(running: Stack, path: str, base: str | None = None) -> Any:
    """``path`` of the stack's gateway (``base``: another one's address), as the admin."""
    request = urllib.request.Request(
        (base or running.gateway_url) + path,
        headers={"Authorization": f"Bearer {running.token_file.read_text().strip()}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def _rule_names(running: Stack) -> set[str]:
    try:
        return {rule["name"] for rule in _get(running, "/api/v1/rules")["rules"]}
    except (OSError, ValueError):
        return set()  # the gateway or the evaluator not (yet, or again) answering


def _answers(running: Stack, path: str) -> bool:
    try:
        _get(running, path)
    except (OSError, ValueError):
        return False
    return True


def _eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)


def _service(running: Stack, name: str) -> ServiceProcess:
    return next(s for s in running.services if s.name == name)


def test_own_rules_file_is_the_one_running_and_watched(own_stack: tuple[Stack, Path, Path]) -> None:
    running, rules, _ = own_stack
    _eventually(lambda: _rule_names(running) == {"MyOwnDiskRule"}, "the own rule in /api/v1/rules")
    rules.write_text(
        OWN_RULES
        + """
  - name: MyOwnLoadRule
    metric: load.1m
    condition: "> 500"
    severity: low
"""
    )
    _eventually(
        lambda: _rule_names(running) == {"MyOwnDiskRule", "MyOwnLoadRule"}, "the edited file reloaded"
    )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_editing_the_notify_config_makes_the_notifier_reload_it(own_stack: tuple[Stack, Path, Path]) -> None:
    running, _, notify = own_stack
    notifier = _service(running, "notifier")
    pid = notifier.proc.pid if notifier.proc else None
    # the stack answers before the notifier has read its file: an edit before that is no reload
    _eventually(lambda: "notifier started" in _read(notifier.log_path), "the notifier's start")
    notify.write_text(OWN_NOTIFY + "  - match: {severity: high}\n    channels: [mine]\n")
    _eventually(lambda: "notifier config reloaded" in notifier.log_path.read_text(), "the notifier's reload")
    # the notifier watches its file itself; the dev stack checks it and says so in its log
    _eventually(
        lambda: f"{notify} changed: the notifier reloads it" in _read(running.logs / "devstack.log"),
        "the dev stack's note of the change",
    )
    assert notifier.proc is not None and notifier.proc.pid == pid  # reloaded, not restarted


def test_a_killed_service_is_restarted_and_answers_again(own_stack: tuple[Stack, Path, Path]) -> None:
    running, _, _ = own_stack
    gateway = _service(running, "gateway")
    _eventually(lambda: bool(_rule_names(running)), "the gateway answering")
    assert gateway.proc is not None
    killed = gateway.proc.pid
    os.kill(killed, signal.SIGKILL)
    _eventually(lambda: gateway.proc is not None and gateway.proc.pid != killed, "a new gateway process")
    _eventually(lambda: "MyOwnDiskRule" in _rule_names(running), "the restarted gateway answering")
    assert _get(running, "/api/v1/hosts") is not None
    log = (running.logs / "devstack.log").read_text()
    assert "gateway exited (killed by SIGKILL)" in log and "restarting in 1 s" in log
    assert "gateway restarted (restart 1)" in log
    assert not running.dead()


@pytest.mark.parametrize("name", ["nats-server", "postgres"])
def test_a_killed_server_is_restarted_and_the_services_carry_on(
    own_stack: tuple[Stack, Path, Path], name: str
) -> None:
    running, _, _ = own_stack
    server = running.nats if name == "nats-server" else running.postgres
    assert server.proc is not None
    killed = server.proc.pid
    os.kill(killed, signal.SIGKILL)
    _eventually(lambda: server.proc is not None and server.proc.pid != killed, f"a new {name}")
    # The rules come from the evaluator over NATS, the hosts from the database.
    _eventually(lambda: "MyOwnDiskRule" in _rule_names(running), f"the API after {name} restarted")
    _eventually(lambda: _answers(running, "/api/v1/hosts"), f"the database after {name} restarted")
    # Said once the server's start returns, which can be after it already answers.
    _eventually(
        lambda: f"{name} restarted (restart 1)" in (running.logs / "devstack.log").read_text(),
        f"the log line of {name}'s restart",
    )
    assert not running.dead()


@pytest.mark.parametrize(
    ("flag", "text", "says"),
    [
        (
            "--rules",
            "rules:\n- name: Broken\n  metric: cpu.usage_percent\n  severity: low\n  condition: '>>> 5'\n",
            ":5: rules[0].condition",
        ),
        ("--notify", None, "cannot read config file"),
    ],
    ids=["invalid-rules", "missing-notify-config"],
)
def test_make_up_with_a_bad_file_stops_before_anything_starts_naming_it(
    tmp_path: Path, flag: str, text: str | None, says: str
) -> None:
    given = tmp_path / "mine.yaml"
    if text is not None:
        given.write_text(text)
    state = tmp_path / "state"
    ports = [f"--{name}-port={free_port()}" for name in ("nats", "gateway", "pg", "metrics")]
    options = ["--no-agent", flag, str(given)]
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy/dev/devstack.py"), "up", "--state", str(state), *ports, *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{given}" in result.stderr and says in result.stderr, result.stderr
    assert "starting nats-server" not in result.stdout
    assert not state.exists()  # nothing was started, not even a directory made


# `make up NATS_NODES=3` ----------------------------------------------------------------------


def _streams(running: Stack) -> dict[str, tuple[int, str | None, list[tuple[str, bool]], int]]:
    """Each stream and KV bucket: (replicas, leader, [(follower, current)], messages)."""

    async def read() -> dict[str, tuple[int, str | None, list[tuple[str, bool]], int]]:
        nats = running.nats_config()
        nc = await connect(nats, "pytest-cluster")
        try:
            js, found = nc.jetstream(), {}
            names = [nats.subjects.metrics_stream, nats.subjects.alerts_stream]
            names += [f"KV_{nats.subjects.bucket(b)}" for b in ("alert_state", "notify_state", "silences")]
            for name in names:
                info = await js.stream_info(name)
                cluster = info.cluster
                followers = (
                    [(str(p.name), bool(p.current)) for p in (cluster.replicas or [])] if cluster else []
                )
                leader = cluster.leader if cluster else None
                found[name] = (info.config.num_replicas or 1, leader, followers, info.state.messages)
            return found
        finally:
            await nc.close()

    return asyncio.run(read())


def _samples(running: Stack) -> int:
    try:
        return int(running.postgres.psql("SELECT count(*) FROM samples", database="signalfire"))
    except DevStackError:
        return 0


@pytest.mark.slow
def test_a_three_node_stack_keeps_storing_when_the_leader_node_is_killed(tmp_path: Path) -> None:
    agent_config = tmp_path / "agent.yaml"
    agent_config.write_text("interval: 1s\nlabels: {env: dev}\n")  # a batch a second, not every 5 s
    state = tmp_path / "state"
    try:
        with stack(
            state,
            free_port(),
            free_port(),
            free_port(),
            agent_config=agent_config,
            durable=False,
            supervise=True,
            nats_nodes=3,
        ) as running:
            nodes = {node.name: node for node in running.nats_nodes}
            urls = [node.url for node in running.nats_nodes]
            assert len(nodes) == 3 and len(set(urls)) == 3
            for service in running.services:  # every service and the agent know every node
                env = service.env
                assert [env["SF_NATS_URL"], *env["SF_NATS_SERVERS"].split(",")] == urls, service.name
                assert env["SF_NATS_REPLICAS"] == "3", service.name
            _eventually(lambda: _samples(running) > 0, "the agent's samples stored", 60)

            def all_current() -> bool:
                # A follower may be a moment behind its leader (not `current`) while the stack
                # starts on 2 busy cores: every stream on 3 nodes, each with 2 followers that
                # catch up, is what is asserted.
                return all(
                    len(followers) == 2 and all(current for _, current in followers)
                    for _, _, followers, _ in _streams(running).values()
                )

            _eventually(all_current, "every stream's two followers current", 30)
            streams = _streams(running)
            for name, (replicas, leader, _, _) in streams.items():
                assert replicas == 3 and leader in nodes, name

            metrics = running.nats_config().subjects.metrics_stream
            victim = nodes[str(streams[metrics][1])]
            assert victim.proc is not None
            killed = victim.proc.pid
            os.kill(killed, signal.SIGKILL)
            at_kill = _samples(running)
            # stored through the survivors while the node is away or catching up
            _eventually(lambda: _samples(running) > at_kill + 20, "samples stored after the kill", 60)
            _eventually(
                lambda: victim.proc is not None and victim.proc.pid != killed, "the node started again"
            )
            number = running.nats_nodes.index(victim) + 1
            log = (running.logs / "devstack.log").read_text()
            assert f"nats-{number} exited (killed by SIGKILL)" in log and f"nats-{number} restarted" in log

            def caught_up() -> bool:
                try:
                    replicas, leader, followers, _ = _streams(running)[metrics]
                except (TimeoutError, nats.errors.Error):
                    return False  # a stream's leader being elected again: its info times out meanwhile
                members = {str(leader), *(name for name, current in followers if current)}
                return replicas == 3 and victim.name in members and len(members) == 3

            _eventually(caught_up, "the restarted node current again", 30)
            # the evaluator answers over NATS: the rules of the default pack, through the gateway
            _eventually(lambda: "HostDown" in _rule_names(running), "the evaluator answering the gateway")
            assert not running.dead(), [s.name for s in running.dead()]
    finally:
        _remove_postgres(state)


@pytest.mark.slow
def test_a_stack_of_replicas_runs_each_and_they_share_the_work(tmp_path: Path) -> None:
    """`make up EVALUATORS=2 NOTIFIERS=2 GATEWAYS=2 INGEST_WORKERS=1`: two of each, their
    logs and /metrics apart, the evaluators splitting the partitions, both notifiers known
    to the API, both gateways serving the agent's host from their ingest workers; an
    evaluator killed is restarted and the two share the partitions again."""
    agent_config = tmp_path / "agent.yaml"
    agent_config.write_text("interval: 1s\n")
    state = tmp_path / "state"
    metrics_port = _free_run(6)  # 4 metrics ports, then the 2 gateways'
    gateway_port = metrics_port + 4
    try:
        with stack(
            state,
            free_port(),
            gateway_port,
            free_port(),
            agent_config=agent_config,
            durable=False,
            supervise=True,
            metrics_port=metrics_port,
            evaluators=2,
            notifiers=2,
            gateways=2,
            ingest_workers=1,
        ) as running:
            names = [s.name for s in running.services]
            assert names == [
                "gateway",
                "gateway-2",
                "evaluator",
                "evaluator-2",
                "notifier",
                "notifier-2",
                "agent",
            ]
            for name in names:
                assert (running.logs / f"{name}.log").exists(), name
            second = f"http://127.0.0.1:{gateway_port + 1}"
            ports = ["evaluator", "notifier", "evaluator-2", "notifier-2"]  # from metrics_port on
            for port, service in enumerate(ports, metrics_port):
                family = "signalfire_evaluator_" if "evaluator" in service else "signalfire_notifier_"
                url = f"http://127.0.0.1:{port}/metrics"
                _eventually(lambda url=url, family=family: family in _page(url), f"{service}'s {url}")  # type: ignore[misc]

            def judged_by_both() -> bool:
                status = _evaluator_status(running)
                held = [info["partitions"] for info in status["replicas"].values() if info["partitions"]]
                return len(held) == 2 and sum(map(len, held)) == 17 and not status["unowned"]

            _eventually(judged_by_both, "the two evaluators holding every partition between them", 60)

            def both_notifiers() -> bool:
                try:
                    return len(_get(running, "/api/v1/notifiers", second)["notifiers"]) == 2
                except (OSError, ValueError, KeyError):
                    return False

            _eventually(both_notifiers, "two notifiers listed by the second gateway", 60)
            host = _service(running, "agent").env["SF_HOSTNAME"]
            for url in (running.gateway_url, second):
                _eventually(lambda url=url: _has_host(running, url, host), f"the host served by {url}", 60)  # type: ignore[misc]
                assert "signalfire_gateway_ingest_workers 1" in _page(f"{url}/metrics")

            evaluator = _service(running, "evaluator")
            assert evaluator.proc is not None
            killed = evaluator.proc.pid
            os.kill(killed, signal.SIGKILL)
            _eventually(
                lambda: evaluator.proc is not None and evaluator.proc.pid != killed, "the evaluator restarted"
            )
            _eventually(judged_by_both, "the partitions shared by two evaluators again", 60)
            assert not running.dead(), [s.name for s in running.dead()]
    finally:
        _remove_postgres(state)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_run(count: int) -> int:
    """The first of ``count`` consecutive ports nobody listens on, below the kernel's
    ephemeral range (as `make up`'s defaults are): a port of that range free now may be any
    connection's own port a second later (the stack's own services connect as they start),
    and a replica's listener, numbered from the first, then cannot bind it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        first = random.randrange(10_000, low - count)
        if all(_free(first + k) for k in range(count)):
            return first


def _page(url: str) -> str:
    """The text at ``url``; empty while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=5) as page:
            return str(page.read().decode())
    except OSError:
        return ""


def _has_host(running: Stack, base: str, host: str) -> bool:
    try:
        return any(h["host"] == host for h in _get(running, "/api/v1/hosts", base)["hosts"])
    except (OSError, ValueError, KeyError):
        return False


def _evaluator_status(running: Stack) -> dict[str, Any]:
    """`signalfire evaluator status --json`, as a person runs it against the stack (as admin)."""
    env = {**_service(running, "evaluator").env, **bus_env(running.bus, "admin")}
    code, out, _ = asyncio.run(signalfire_cli("evaluator", "status", "--json", env=env))
    if code != 0:  # no bucket yet: no evaluator has started
        return {"replicas": {}, "unowned": []}
    status: dict[str, Any] = json.loads(out)
    return status
