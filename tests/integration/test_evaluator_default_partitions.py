"""Evaluators with nothing configured but NATS and the rules: one alone judges every host from
its start, a second started beside it takes its share under an id of its own with no alert
judged twice, a replica_id set twice is refused by name, and one killed and started again
under its id takes every partition back at once."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig, request_json
from signalfire.config import ConfigError, Duration
from signalfire.evaluator.partitions import host_partition, partition_names
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService
from signalfire.events import MetricBatch, Sample, encode
from tests.faults.support import alert_events, eventually, kill9, service_env, wait_evaluator
from tests.support.evaluator import running_evaluator

HOSTS = [f"default-{i}" for i in range(24)]
RULES = """\
rules:
  - {name: Hot, metric: temp, condition: "> 50", resolve: "< 40", severity: high}
"""


def config(nats: NatsConfig, tmp_path: Path, **settings: Any) -> EvaluatorConfig:
    """What an operator writes: the bus and the rules (and a fast tick, for the test's pace)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return EvaluatorConfig(nats=nats, rules=[str(rules)], tick_interval=Duration(0.1), **settings)


async def send(nc: Any, nats: NatsConfig, hosts: list[str], value: float) -> None:
    for host in hosts:
        batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=value)])
        await nc.publish(nats.subjects.metrics(host), encode(batch))
    await nc.flush()


def judged(service: EvaluatorService) -> set[str]:
    return set(service.describe()["replica"]["judged"])


async def test_a_lone_evaluator_holds_every_partition_from_its_start_and_alerts_on_its_first_sample(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    async with running_evaluator(config(nats_config, tmp_path)) as service:
        assert service.config.partitions == 16
        assert judged(service) == set(partition_names(16))  # no wait for a lease
        started = time.monotonic()
        await send(nc, nats_config, HOSTS[:1], 95.0)

        async def fired() -> bool:
            return any(e.status == "firing" for e in await alert_events(nc.jetstream(), nats_config))

        await eventually(fired, "the first sample to fire", 5)
        assert time.monotonic() - started < 1.0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_second_evaluator_started_beside_the_first_shares_the_hosts_with_no_alert_twice(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    async with (
        running_evaluator(config(nats_config, tmp_path)) as a,
        running_evaluator(config(nats_config, tmp_path)) as b,
    ):
        # One host, so one host name: the second takes the next id, not the first's.
        assert b.replica_id == f"{a.replica_id}-2"

        def shared() -> bool:
            a_, b_ = judged(a), judged(b)
            return bool(a_) and bool(b_) and not a_ & b_ and a_ | b_ == set(partition_names(16))

        await eventually(shared, "the two evaluators to split the partitions", 15)
        assert {host_partition(h, 16) for h in HOSTS} & judged(b), "no host judged by the second"
        await send(nc, nats_config, HOSTS, 95.0)

        async def all_fired() -> bool:
            return len([e for e in await alert_events(js, nats_config) if e.status == "firing"]) >= len(HOSTS)

        await eventually(all_fired, "every host to fire", 10)
        await asyncio.sleep(1.0)  # a second judge would have published by now
        firing = [e.host for e in await alert_events(js, nats_config) if e.status == "firing"]
        assert sorted(firing) == sorted(HOSTS)  # each host once


@pytest.mark.timeout(60)
async def test_evaluators_started_at_the_same_moment_on_one_host_take_distinct_ids(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    services = [EvaluatorService(config(nats_config, tmp_path)) for _ in range(3)]
    try:
        await asyncio.gather(*(service.start() for service in services))
        # One compare-and-set on the announcement wins each id: the host name, then -2, -3.
        ids = {service.replica_id for service in services}
        base = min(ids, key=len)
        assert ids == {base, f"{base}-2", f"{base}-3"}

        def shared() -> bool:
            held = [judged(service) for service in services]
            return all(held) and sum(map(len, held)) == 17 and set().union(*held) == set(partition_names(16))

        await eventually(shared, "the three evaluators to split the partitions", 15)
    finally:
        for service in services:
            await service.stop()


@pytest.mark.timeout(60)
async def test_a_replica_id_a_running_evaluator_has_is_refused_by_name(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    async with running_evaluator(config(nats_config, tmp_path, replica_id="eval-a")) as a:
        twin = EvaluatorService(config(nats_config, tmp_path, replica_id="eval-a"))
        try:
            with pytest.raises(ConfigError) as refused:
                await twin.start()
        finally:
            await twin.stop()
        message = str(refused.value)
        assert "replica_id 'eval-a'" in message and "SF_REPLICA_ID" in message
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        await asyncio.sleep(1.5)  # more than a poll: the first keeps every partition
        assert judged(a) == set(partition_names(16))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_cli_names_the_setting_when_the_replica_id_is_taken(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    async with running_evaluator(config(nats_config, tmp_path, replica_id="eval-a")):
        env = {
            **os.environ,
            "SF_NATS_URL": nats_config.url,
            "SF_NATS_PREFIX": nats_config.prefix,
            "SF_RULES": str(tmp_path / "rules.yaml"),
            "SF_REPLICA_ID": "eval-a",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "signalfire.cli",
            "evaluator",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "signalfire: replica_id 'eval-a' is used by a running evaluator" in err.decode()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_an_evaluator_killed_and_started_again_under_its_id_takes_every_partition_back_at_once(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    rules = config(nats_config, tmp_path).rules[0]
    env = service_env(nats_config, SF_RULES=rules, SF_TICK_INTERVAL="0.1s", SF_REPLICA_ID="eval-a")
    first = ServiceProcess("evaluator-1", ["evaluator"], env, tmp_path).start()
    second = ServiceProcess("evaluator-2", ["evaluator"], env, tmp_path)
    try:
        await wait_evaluator(nc, nats_config, first)
        await asyncio.sleep(1.5)  # a poll or more: its leases renewed since they were taken
        kill9(first)  # its announcement and leases stay, not yet expired (6 s)
        second.start()
        await wait_evaluator(nc, nats_config, second)
        described = await request_json(nc, nats_config.subjects.control("evaluator", "rules"), timeout=2)
        # Its earlier life answers for the id no more: no error, and every partition at once.
        assert described["replica"] == {"id": "eval-a", "partitions": 16, "judged": partition_names(16)}
        await send(nc, nats_config, HOSTS[:1], 95.0)

        async def fired() -> bool:
            return any(e.status == "firing" for e in await alert_events(js, nats_config))

        await eventually(fired, "the restarted evaluator to fire", 5, second)
    finally:
        first.stop()
        second.stop()


@pytest.mark.timeout(60)
async def test_an_id_whose_holder_does_not_answer_is_passed_over_with_a_warning(
    nc: Any, nats_config: NatsConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The host's id was announced, and something listens on its control subject but never
    answers (a hung process, or a bus whose accounts refuse the question): the evaluator takes
    the next id, and says so as a warning, naming why: the silent one may be this host's own
    evaluator killed a moment ago, whose partitions then wait for their leases to lapse."""
    first = EvaluatorService(config(nats_config, tmp_path))
    await first.start()
    host_id = first.replica_id
    assert first._nc is not None and first._lease_nc is not None
    await first._lease_nc.close()  # dead as far as the bus can tell; its announcement stays
    await first._nc.close()
    silent = await nc.subscribe(nats_config.subjects.control("evaluator", f"replica.{host_id}"))
    try:
        async with running_evaluator(config(nats_config, tmp_path)) as second:
            assert second.replica_id == f"{host_id}-2"
        [record] = [
            r for r in caplog.records if r.getMessage().startswith("a running evaluator has this host's")
        ]
        assert record.levelname == "WARNING"
        assert "no answer within" in getattr(record, "taken", "")
    finally:
        await silent.unsubscribe()
        await first.stop()
