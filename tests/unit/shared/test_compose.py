"""compose.yaml and its scaled shape (compose.yaml + compose.scaled.yaml) agree with the code:
every variable a service is given is a setting of that service, every command a `signalfire`
subcommand, every volume declared or in the repository, and in the scaled shape three NATS
nodes route to each other and every service knows all three and keeps 3 replicas.

No Docker engine runs here: the files are parsed, merged and interpolated the way compose
does for the keys they use (the merge refuses keys it does not know how to merge)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from signalfire.bus import NatsConfig
from signalfire.cli import build_parser
from signalfire.collector.config import AgentConfig
from signalfire.config import apply_env, load_config
from signalfire.evaluator.service import EvaluatorConfig
from signalfire.gateway.config import GatewayConfig
from signalfire.notifier.config import NotifyConfig, load_notify_config

REPO = Path(__file__).resolve().parents[3]
BASE = REPO / "compose.yaml"
SCALED = REPO / "compose.scaled.yaml"
#: The config struct each `signalfire` subcommand run by compose reads its SF_* variables into.
CONFIGS: dict[str, type[Any]] = {
    "gateway": GatewayConfig,
    "evaluator": EvaluatorConfig,
    "notifier": NotifyConfig,
    "agent": AgentConfig,
}
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` resolved against ``env``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, operator, word = match.groups()
        given = env.get(name, "")
        if given:
            return given
        if operator in (":?", "?"):
            raise AssertionError(f"{name} is required: {word}")
        return word or ""

    return _VARIABLE.sub(one, value)


def _target(volume: str) -> str:
    return volume.split(":")[1]


def _merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key in ("environment", "networks", "deploy") and key in merged:
            assert isinstance(value, dict) and isinstance(merged[key], dict), key
            merged[key] = {**merged[key], **value}
        elif key == "volumes" and key in merged:
            by_target = {_target(v): v for v in merged[key]}
            by_target.update({_target(v): v for v in value})
            merged[key] = list(by_target.values())
        elif key in ("command", "image", "restart", "hostname", "ports", "build") or key not in merged:
            merged[key] = value
        else:
            raise AssertionError(f"the test does not know how compose merges {key!r}: teach _merge_service")
    return merged


def shape(*files: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The project compose would run from ``files`` (later ones merged into earlier ones),
    interpolated with ``env`` plus a value for every required password."""
    project: dict[str, Any] = {"services": {}, "volumes": {}}
    for path in files:
        data = yaml.safe_load(path.read_text())
        for name, service in data["services"].items():
            old = project["services"].get(name)
            project["services"][name] = service if old is None else _merge_service(old, service)
        project["volumes"].update(data.get("volumes") or {})
    text = BASE.read_text() + SCALED.read_text()
    required = {name: "secret" for name, op, _ in _VARIABLE.findall(text) if op == ":?"}
    return dict(interpolate(project, {**required, **(env or {})}))


def default() -> dict[str, Any]:
    return shape(BASE)


def scaled(**env: str) -> dict[str, Any]:
    return shape(BASE, SCALED, env=env)


def running(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that start: not scaled to 0 replicas."""
    return {
        name: service
        for name, service in project["services"].items()
        if int((service.get("deploy") or {}).get("replicas", 1)) > 0
    }


def signalfire_services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in project["services"].items() if "build" in s}


def nats_nodes(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in project["services"].items() if str(s.get("image", "")).startswith("nats:")}


def service_config(service: dict[str, Any]) -> Any:
    """The service's config as it would start: its SF_* variables over its config file, if any."""
    command, env = service["command"], {k: str(v) for k, v in service["environment"].items()}
    config_file = None
    if "--config" in command:
        mounted = command[command.index("--config") + 1]
        source = next(v.split(":")[0] for v in service.get("volumes", []) if _target(v) == mounted)
        config_file = REPO / source
    if command[0] == "notifier":
        return load_notify_config(config_file, environ=env)
    return load_config(CONFIGS[command[0]], config_file, environ=env)


SHAPES: dict[str, Callable[[], dict[str, Any]]] = {
    "default": default,
    "scaled": scaled,
}


@pytest.mark.parametrize("name", SHAPES)
def test_every_variable_a_service_gets_is_one_of_its_settings(name: str) -> None:
    for service_name, service in signalfire_services(SHAPES[name]()).items():
        kind = CONFIGS[service["command"][0]]
        for key, value in service["environment"].items():
            applied = apply_env({}, kind, {key: str(value)})
            assert applied == [key], (
                f"{service_name}: {key} is no setting of `signalfire {service['command'][0]}`"
            )
        service_config(service)  # and the values are valid: ConfigError otherwise


@pytest.mark.parametrize("name", SHAPES)
def test_every_command_is_a_signalfire_subcommand_of_the_image(name: str) -> None:
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["signalfire"]' in dockerfile
    parser = build_parser()
    for service_name, service in signalfire_services(SHAPES[name]()).items():
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile", service_name
        args = parser.parse_args(service["command"])
        assert args.command == service["command"][0] and callable(args.handler), service_name


@pytest.mark.parametrize("name", SHAPES)
def test_every_volume_is_declared_or_a_file_of_the_repository(name: str) -> None:
    project = SHAPES[name]()
    for service_name, service in project["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(("./", "/")):
                if source.startswith("./"):
                    assert (REPO / source).exists(), f"{service_name} mounts {source}, which does not exist"
            else:
                assert source in project["volumes"], f"{service_name} uses volume {source}, not declared"
    for node in nats_nodes(project).values():  # one JetStream store per node
        stores = [v.split(":")[0] for v in node["volumes"] if _target(v) == "/data"]
        assert len(stores) == 1
    stores = [
        v.split(":")[0] for n in nats_nodes(project).values() for v in n["volumes"] if _target(v) == "/data"
    ]
    assert len(set(stores)) == len(stores)


def test_the_default_shape_is_one_node_and_one_of_each_service() -> None:
    project = default()
    assert list(nats_nodes(project)) == ["nats"]
    commands = sorted(s["command"][0] for s in signalfire_services(project).values())
    assert commands == ["agent", "evaluator", "gateway", "notifier"]
    for service in signalfire_services(project).values():
        nats = service_config(service).nats
        assert (nats.url, nats.servers, nats.replicas) == ("nats://nats:4222", [], 1)


def test_the_scaled_shape_runs_three_nodes_two_gateways_two_notifiers_and_timescaledb() -> None:
    project = running(scaled())
    assert sorted(nats_nodes({"services": project})) == ["nats", "nats-2", "nats-3"]
    commands = sorted(s["command"][0] for s in signalfire_services({"services": project}).values())
    assert commands == ["agent", "evaluator", "evaluator", "gateway", "gateway", "notifier", "notifier"]
    assert str(project["timescaledb"]["image"]).startswith("timescale/timescaledb:")
    # Two evaluators only ever as a partitioned pair: the same partition count (the default),
    # distinct replica ids (two unpartitioned evaluators would notify every alert twice).
    evaluators = [
        service_config(s)
        for s in signalfire_services({"services": project}).values()
        if s["command"][0] == "evaluator"
    ]
    assert {e.partitions for e in evaluators} == {16}
    assert len({e.replica_id for e in evaluators}) == 2
    # Two gateways, each ingesting in two worker processes (the API in its own), the same number:
    # worker k of each reads share k of the hosts (different numbers would both read everything).
    gateways = [
        service_config(s)
        for s in signalfire_services({"services": project}).values()
        if s["command"][0] == "gateway"
    ]
    assert [g.ingest_workers for g in gateways] == [2, 2]


def test_the_default_shape_ingests_in_the_gateways_own_process() -> None:
    (gateway,) = [s for s in signalfire_services(default()).values() if s["command"][0] == "gateway"]
    assert service_config(gateway).ingest_workers == 0


def _cluster_conf() -> str:
    return (REPO / "deploy" / "nats" / "cluster.conf").read_text()


def test_the_three_nodes_are_one_cluster_routing_to_each_other() -> None:
    project = scaled()
    nodes = nats_nodes(project)
    conf = _cluster_conf()
    assert re.search(r"^server_name: \$NODE$", conf, re.MULTILINE)
    assert "include ./accounts.conf" in conf
    listen = re.search(r"cluster \{[^}]*listen: [\d.]+:(\d+)", conf, re.DOTALL)
    assert listen is not None
    routes = re.findall(r"nats-route://([a-z0-9-]+):(\d+)", conf)
    assert {port for _, port in routes} == {listen.group(1)}
    # each route names a node by its service name or network alias, every node once
    name_of: dict[str, str] = {}
    for name, node in nodes.items():
        name_of[name] = name
        for alias in ((node.get("networks") or {}).get("default") or {}).get("aliases", []):
            name_of[alias] = name
    assert sorted(name_of[host] for host, _ in routes) == sorted(nodes)
    names = set()
    for name, node in nodes.items():
        assert node["command"] == ["--config", "/etc/nats/cluster.conf"], name
        mounts = {_target(v): v.split(":")[0] for v in node["volumes"]}
        assert mounts["/etc/nats/cluster.conf"] == "./deploy/nats/cluster.conf", name
        assert mounts["/etc/nats/accounts.conf"] == "./deploy/nats/accounts.conf", name
        names.add(node["environment"]["NODE"])
        # the same accounts on every node: every password the accounts need
        for variable in re.findall(
            r"\$(SF_NATS_[A-Z0-9_]+)", (REPO / "deploy/nats/accounts.conf").read_text()
        ):
            assert node["environment"][variable] == "secret", (name, variable)
    assert names == {host for host, _ in routes}  # server names as the routes call them


def test_every_service_of_the_scaled_shape_knows_all_three_nodes_and_keeps_3_replicas() -> None:
    project = scaled()
    nodes = nats_nodes(project)
    aliases = {
        alias: name
        for name, node in nodes.items()
        for alias in [name, *((node.get("networks") or {}).get("default") or {}).get("aliases", [])]
    }
    for name, service in signalfire_services(project).items():
        nats: NatsConfig = service_config(service).nats
        urls = [nats.url, *nats.servers]
        hosts = [urlsplit(url).hostname for url in urls]
        assert sorted(aliases[str(h)] for h in hosts) == sorted(nodes), f"{name}: {urls}"
        assert all(urlsplit(url).port == 4222 for url in urls), name
        assert nats.replicas == 3, name


def test_no_node_publishes_monitoring_and_nats_only_on_loopback() -> None:
    for name, service in scaled()["services"].items():
        for entry in service.get("ports", []):
            parts = str(entry).split(":")
            assert parts[-1] != "8222", f"{name} publishes the NATS monitoring port"
            if parts[-1] == "4222":
                assert parts[0] == "127.0.0.1", f"{name} publishes NATS on {parts[0]}"
