"""Every service and the agent take a NATS cluster from the environment: SF_NATS_URL, the other
nodes in SF_NATS_SERVERS (a comma-separated list) and SF_NATS_REPLICAS."""

from __future__ import annotations

from typing import Any

import pytest

from signalfire.bus import NatsConfig, stream_configs
from signalfire.collector.config import AgentConfig
from signalfire.config import ConfigError, load_config
from signalfire.evaluator.service import EvaluatorConfig
from signalfire.gateway.config import GatewayConfig
from signalfire.notifier.config import load_notify_config

CLUSTER = {
    "SF_NATS_URL": "nats://nats-1:4222",
    "SF_NATS_SERVERS": "nats://nats-2:4222, nats://nats-3:4222",
    "SF_NATS_REPLICAS": "3",
    "SF_DATABASE_URL": "postgresql://db/sf",
}


def _nats(service: str, environ: dict[str, str]) -> NatsConfig:
    config: Any
    if service == "notifier":
        config = load_notify_config(None, environ=environ)
    elif service == "agent":
        config = load_config(AgentConfig, None, environ=environ)
    elif service == "evaluator":
        config = load_config(EvaluatorConfig, None, environ=environ)
    else:
        config = load_config(GatewayConfig, None, environ=environ)
    assert isinstance(config.nats, NatsConfig)
    return config.nats


@pytest.mark.parametrize("service", ["agent", "evaluator", "gateway", "notifier"])
def test_every_service_takes_the_whole_cluster_from_the_environment(service: str) -> None:
    nats = _nats(service, CLUSTER)
    assert [nats.url, *nats.servers] == ["nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"]
    assert nats.replicas == 3


def test_streams_are_made_with_the_configured_replicas() -> None:
    nats = _nats("gateway", CLUSTER)
    assert [stream.num_replicas for stream in stream_configs(nats)] == [3, 3]


def test_replicas_beyond_what_jetstream_allows_are_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"nats\.replicas: must be 1 to 5.*SF_NATS_REPLICAS"):
        _nats("gateway", {**CLUSTER, "SF_NATS_REPLICAS": "7"})
