"""Evaluator replicas sharing host partitions on a real NATS: a replica that joins takes its
share with every firing alert intact (no repeat, no lost resolve), a clean stop hands its
partitions over at once, and ``signalfire evaluator status`` and the gateway's rules page
show who judges what."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.evaluator import service as service_module
from signalfire.evaluator.leases import read_bucket
from signalfire.evaluator.partitions import assign, host_partition, partition_names
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService
from signalfire.evaluator.status import ownership
from signalfire.events import MetricBatch, Sample, encode
from signalfire.runner import ServiceFailed, serve
from tests.faults.support import alert_events, events_after_resolve, eventually
from tests.integration.gateway_support import gateway_config, running_gateway
from tests.support.metrics import value
from tests.support.tasks import cancelled

PARTITIONS = 16
HOSTS = [f"part-{i}" for i in range(24)]
RULES = """\
rules:
  - {name: Hot, metric: temp, condition: "> 50", resolve: "< 40", severity: high}
  - {name: FleetHot, metric: temp, aggregate: max, window: 30s, group_by: fleet, condition: "> 50",
     severity: high}
"""


def config(nats: NatsConfig, rules: Path, replica: str) -> EvaluatorConfig:
    return EvaluatorConfig(
        nats=nats,
        rules=[str(rules)],
        tick_interval=Duration(0.1),
        watch_interval=Duration(0),
        partitions=PARTITIONS,
        failover_after=Duration(2),
        replica_id=replica,
    )


def two_replicas(nats: NatsConfig, tmp_path: Path) -> tuple[EvaluatorService, EvaluatorService]:
    """Replicas ``a`` and ``b`` of :data:`RULES` (written to ``tmp_path``), not started."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return EvaluatorService(config(nats, rules, "a")), EvaluatorService(config(nats, rules, "b"))


async def send_all(nc: Any, nats: NatsConfig, value: float) -> None:
    for host in HOSTS:
        batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=value)])
        await nc.publish(nats.subjects.metrics(host), encode(batch))
    await nc.flush()


async def status(nats: NatsConfig, repository: Path | None = None) -> dict[str, Any]:
    """``signalfire evaluator status --json``, run while the replicas in this process go on;
    with ``repository``, run in it with the bus's settings only in its ``.signalfire/env``, as
    ``make up`` writes them (a newcomer's run in the repository)."""
    env = {**os.environ, "SF_NATS_URL": nats.url, "SF_NATS_PREFIX": nats.prefix}
    if repository is not None:
        (repository / ".signalfire").mkdir(exist_ok=True)
        settings = "".join(f"{k}={env.pop(k)}\n" for k in ("SF_NATS_URL", "SF_NATS_PREFIX"))
        (repository / ".signalfire" / "env").write_text(settings)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalfire.cli",
        "evaluator",
        "status",
        "--json",
        env=env,
        cwd=repository,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_joining_replica_takes_its_share_without_repeating_or_losing_an_alert(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    a, b = two_replicas(nats_config, tmp_path)
    await a.start()
    try:
        assert a.describe()["replica"]["judged"] == partition_names(PARTITIONS)  # alone: everything
        await send_all(nc, nats_config, 95.0)

        async def all_fired() -> bool:
            firing = [e for e in await alert_events(js, nats_config) if e.status == "firing"]
            return len(firing) == len(HOSTS) + 1  # every host, and the fleet

        await eventually(all_fired, "every host and the fleet to fire", 10)
        await b.start()

        def shared() -> bool:
            judged_a = set(a.describe()["replica"]["judged"])
            judged_b = set(b.describe()["replica"]["judged"])
            return not judged_a & judged_b and len(judged_a | judged_b) == PARTITIONS + 1 and bool(judged_b)

        await eventually(shared, "replica b to take its share", 10)
        judged_b = set(b.describe()["replica"]["judged"])
        moved = [h for h in HOSTS if host_partition(h, PARTITIONS) in judged_b]
        assert moved, "no host moved to the new replica"

        async def status_shows_the_split() -> bool:
            # The leases follow the judging: the giver deletes its lease once it has written
            # what it decided, then the taker claims it.
            shown = await status(nats_config, repository=tmp_path)
            return shown["unowned"] == [] and {
                r: sorted(i["partitions"]) for r, i in shown["replicas"].items()
            } == {"a": sorted(a.describe()["replica"]["judged"]), "b": sorted(judged_b)}

        await eventually(status_shows_the_split, "evaluator status to show the split", 10)
        await asyncio.sleep(0.5)
        await send_all(nc, nats_config, 60.0)  # still firing (above the resolve threshold)
        await send_all(nc, nats_config, 30.0)  # every host clears

        async def all_resolved() -> bool:
            resolved = [e for e in await alert_events(js, nats_config) if e.status == "resolved"]
            return len(resolved) >= len(HOSTS)

        await eventually(all_resolved, "every host to resolve", 10)
        await b.stop()
        started = time.monotonic()

        def handed_back() -> bool:
            return len(a.describe()["replica"]["judged"]) == PARTITIONS + 1

        await eventually(handed_back, "replica a to take back what b gave up", 10)
        handback = time.monotonic() - started
        shown = await status(nats_config)
        assert shown["replicas"].keys() == {"a"} and shown["unowned"] == []
        await asyncio.sleep(1)
        events = await alert_events(js, nats_config)
    finally:
        await b.stop()
        await a.stop()
    per_host = {h: [e.status for e in events if e.host == h and e.rule == "Hot"] for h in HOSTS}
    assert all(statuses == ["firing", "resolved"] for statuses in per_host.values()), per_host
    # Its window holds the 95 and the 60 on whichever replica judges the fleet (a new owner
    # reads the window's history back).
    assert [e.status for e in events if e.rule == "FleetHot"] == ["firing"]
    assert handback < 1.0  # a clean stop frees its leases: taken at the next poll (0.2 s)
    # A clean stop leaves no lease behind.
    assert (await status(nats_config))["replicas"] == {}


@pytest.mark.timeout(60)
async def test_a_replica_whose_judging_loop_breaks_exits_and_the_other_judges_its_hosts(
    nc: Any, nats_config: NatsConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in b's tick (something no test foresaw) ends its tick loop: b stops and its
    process would exit with status 1 for its supervisor to start it again, instead of living
    on with its leases renewed and nothing judged; a takes its partitions, and a host of
    theirs that runs hot fires, once."""
    js = nc.jetstream()
    a, b = two_replicas(nats_config, tmp_path)
    await a.start()
    serving_b = asyncio.create_task(serve(b))
    try:

        def shared() -> bool:
            return bool(b.describe()["replica"]["judged"]) and bool(a.describe()["replica"]["judged"])

        await eventually(shared, "the replicas to share the partitions", 10)
        host = next(h for h in HOSTS if host_partition(h, PARTITIONS) in b.describe()["replica"]["judged"])

        def broken(now: float) -> None:
            raise RuntimeError("a bug in judging")

        monkeypatch.setattr(b, "tick", broken)
        with pytest.raises(ServiceFailed, match=r"^evaluator-tick ended: RuntimeError: a bug in judging$"):
            await asyncio.wait_for(serving_b, 10)
        await eventually(lambda: len(a.describe()["replica"]["judged"]) == PARTITIONS + 1, "a to take all", 5)
        batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=95.0)])
        await nc.publish(nats_config.subjects.metrics(host), encode(batch))

        async def fired() -> bool:
            return any(e.host == host and e.status == "firing" for e in await alert_events(js, nats_config))

        await eventually(fired, f"{host} to fire on a", 10)
        await asyncio.sleep(0.5)
        events = [e for e in await alert_events(js, nats_config) if e.host == host]
    finally:
        serving_b.cancel()
        await b.stop()
        await a.stop()
    assert [(e.rule, e.status) for e in events] == [("Hot", "firing")]


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_rules_page_shows_the_alerts_of_every_replica(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    a, b = two_replicas(nats_config, tmp_path)
    await a.start()
    await b.start()
    try:

        def shared() -> bool:
            judged = [set(r.describe()["replica"]["judged"]) for r in (a, b)]
            return all(judged) and len(judged[0] | judged[1]) == PARTITIONS + 1

        await eventually(shared, "both replicas to hold partitions", 10)
        await send_all(nc, nats_config, 95.0)

        def all_firing() -> bool:
            firing = sum(1 for r in (a, b) for s in r.engine.states.values() if s.status == "firing")
            return firing == len(HOSTS) + 1

        await eventually(all_firing, "every host and the fleet to fire", 10)
        gateway = gateway_config(nats_config, database_url, tmp_path)
        async with running_gateway(gateway) as gw, gw.client() as api:
            response = await api.get("/api/v1/rules")
            assert response.status_code == 200, response.text
            page = response.json()
            hot = next(r for r in page["rules"] if r["name"] == "Hot")
            assert sorted(alert["host"] for alert in hot["alerts"]) == sorted(HOSTS)
            assert page["complete"] is True
            assert {r["id"] for r in page["replicas"]} == {"a", "b"}
            b_judged = sorted(b.describe()["replica"]["judged"])
            assert page["evaluators"] == {
                "partitions": PARTITIONS,
                "replicas": [
                    {"id": "a", "judged": sorted(a.describe()["replica"]["judged"])},
                    {"id": "b", "judged": b_judged},
                ],
                "unjudged": [],
            }

            # b dies, as far as the bus can tell (no renewal, no release, no answer): until a
            # takes its partitions over, the page names them as judged by no one.
            assert b._nc is not None and b._lease_nc is not None
            await b._lease_nc.close()
            await b._nc.close()
            response = await api.get("/api/v1/rules")
            assert response.status_code == 200, response.text
            evaluators = response.json()["evaluators"]
            assert [r["id"] for r in evaluators["replicas"]] == ["a"]
            assert evaluators["unjudged"] == b_judged

            async def taken_over() -> bool:
                again = (await api.get("/api/v1/rules")).json()["evaluators"]
                return again["unjudged"] == [] and len(again["replicas"][0]["judged"]) == PARTITIONS + 1

            await eventually(taken_over, "a to take b's partitions over", 20)
    finally:
        with contextlib.suppress(Exception):
            await b.stop()
        await a.stop()


def average(values: list[float]) -> float:
    return sum(values) / len(values)


WINDOW_RULES = """\
rules:
  - {name: AvgHot, metric: temp, aggregate: avg, window: 10s, condition: "> 50", resolve: "<= 50",
     severity: high}
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_window_moved_to_a_joining_replica_fires_when_one_replica_would_have(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    """A partition given up cleanly to a replica that joins mid-window: the new owner reads the
    window's history back, so it fires on the sample one replica would have fired on, not on
    its first (which would be a window of heat only)."""
    js = nc.jetstream()
    rules = tmp_path / "rules.yaml"
    rules.write_text(WINDOW_RULES)
    to_b = {p for p, r in assign(partition_names(PARTITIONS), ["a", "b"]).items() if r == "b"}
    host = next(f"moving-{i}" for i in range(1000) if host_partition(f"moving-{i}", PARTITIONS) in to_b)
    level = 30.0
    published: list[tuple[float, float]] = []

    async def publish_every_quarter_second() -> None:
        while True:
            now = time.time()
            batch = MetricBatch(host=host, time=now, samples=[Sample(name="temp", value=level)])
            await nc.publish(nats_config.subjects.metrics(host), encode(batch))
            published.append((now, level))
            await asyncio.sleep(0.25)

    a = EvaluatorService(config(nats_config, rules, "a"))
    b = EvaluatorService(config(nats_config, rules, "b"))
    await a.start()
    publisher = asyncio.create_task(publish_every_quarter_second())
    try:
        await asyncio.sleep(6)  # 6 s of cold samples
        hot_from = time.time()
        level = 70.0
        await asyncio.sleep(2)  # the window's average at about 40
        await b.start()

        def moved() -> bool:
            return host_partition(host, PARTITIONS) in b.describe()["replica"]["judged"]

        await eventually(moved, "replica b to take the host's partition", 10)
        moved_at = time.time()

        async def fired() -> bool:
            return any(e.status == "firing" for e in await alert_events(js, nats_config))

        await eventually(fired, "AvgHot to fire", 15)
        await asyncio.sleep(max(1.0, hot_from + 7 - time.time()))  # past when it should fire
        events = await alert_events(js, nats_config)
    finally:
        await cancelled(publisher)
        await b.stop()
        await a.stop()
    expected = next(
        t
        for i, (t, _) in enumerate(published)
        if t > hot_from and average([v for s, v in published[: i + 1] if s > t - 10]) > 50
    )
    [firing] = [e for e in events if e.status == "firing"]
    assert moved_at < expected, "the partition moved after the window crossed: nothing tested"
    assert abs(firing.starts_at - expected) <= 1.0, (firing.starts_at - expected, moved_at - hot_from)
    assert value(b.registry, "signalfire_evaluator_replayed_batches_total", mode="warm") > 0


ANOMALY_RULES = """\
rules:
  - {name: Odd, kind: anomaly, metric: temp, condition: "> 4", warmup: 20, severity: high}
"""


def anomaly_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """The anomaly rules file, baselines written every 0.5 s, and a host that replica ``b``
    holds once it joins ``a``."""
    monkeypatch.setattr(service_module, "BASELINE_EVERY", 0.5)
    rules = tmp_path / "rules.yaml"
    rules.write_text(ANOMALY_RULES)
    to_b = {p for p, r in assign(partition_names(PARTITIONS), ["a", "b"]).items() if r == "b"}
    return rules, next(f"odd-{i}" for i in range(1000) if host_partition(f"odd-{i}", PARTITIONS) in to_b)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_an_anomaly_baseline_moves_with_its_partition(
    nc: Any, nats_config: NatsConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica that takes a partition starts from the anomaly baselines its previous owner
    wrote to KV: an outlier right after the move fires, with no second warm-up."""
    rules, host = anomaly_setup(tmp_path, monkeypatch)
    js = nc.jetstream()

    async def send(value: float) -> None:
        batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=value)])
        await nc.publish(nats_config.subjects.metrics(host), encode(batch))
        await nc.flush()

    a = EvaluatorService(config(nats_config, rules, "a"))
    b = EvaluatorService(config(nats_config, rules, "b"))
    await a.start()
    try:
        for i in range(30):  # the baseline: 30 samples, warm-up 20
            await send(50.0 + i % 3)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # written to KV
        await b.start()

        def moved() -> bool:
            return host_partition(host, PARTITIONS) in b.describe()["replica"]["judged"]

        await eventually(moved, "replica b to take the host's partition", 10)
        await send(500.0)

        async def fired() -> bool:
            return any(e.status == "firing" for e in await alert_events(js, nats_config))

        await eventually(fired, "the outlier to fire on the new owner", 5)
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("move", ["given up", "owner died"])
async def test_a_moved_anomaly_baseline_holds_every_sample_of_its_series(
    nc: Any, nats_config: NatsConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, move: str
) -> None:
    """The baseline the new owner judges with counts every sample its series had, not only
    those of the last snapshot (taken every 30 s): an owner giving the partition up writes its
    baselines first; the successor of an owner that died reads the stream back from the
    snapshot on. Before, the samples between the snapshot and the takeover's own look-back
    (here 40 of 70) were missing from the baseline."""
    rules, host = anomaly_setup(tmp_path, monkeypatch)
    js = nc.jetstream()

    async def send(count: int) -> None:
        for i in range(count):
            batch = MetricBatch(
                host=host, time=time.time(), samples=[Sample(name="temp", value=50.0 + i % 3)]
            )
            await js.publish(nats_config.subjects.metrics(host), encode(batch), timeout=2)
            await asyncio.sleep(0.05)

    a = EvaluatorService(config(nats_config, rules, "a"))
    b = EvaluatorService(config(nats_config, rules, "b"))
    await a.start()
    try:
        await send(30)
        await asyncio.sleep(1.2)  # a snapshot of 30 samples written
        monkeypatch.setattr(service_module, "BASELINE_EVERY", 3600.0)
        await asyncio.sleep(0.6)  # the last short wait ends: no snapshot after this one
        await send(40)
        await asyncio.sleep(2.5)  # past any takeover's own look-back (a poll is 0.4 s)
        if move == "owner died":  # as far as the bus can tell: no renewal, no release
            assert a._nc is not None and a._lease_nc is not None
            await a._lease_nc.close()
            await a._nc.close()
        await b.start()

        def moved() -> bool:
            return host_partition(host, PARTITIONS) in b.describe()["replica"]["judged"]

        await eventually(moved, "replica b to take the host's partition", 20)
        [series] = b.engine.baselines(lambda h: h == host)["Odd"]["series"]
    finally:
        await b.stop()
        with contextlib.suppress(Exception):
            await a.stop()
    assert series[0] == host
    assert series[5] == 70, f"the baseline counts {series[5]} samples of 70"


SPIKE_RULES = """\
rules:
  - {name: Spike, metric: spike, condition: "> 90", severity: high}
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_gap_after_an_owner_whose_clock_ran_ahead_is_still_judged(
    nc: Any, nats_config: NatsConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The owner of a partition dies with its clock 30 s ahead of the NATS server's. A sample
    published after its last renewal, while nobody held the partition, must fire on the new
    owner and resolve: what the old owner judged is read from when the server stored its
    renewal, not from the time its own clock wrote in it (which put the whole gap, and the
    30 s after it, among what it had judged, so the spike was never judged)."""
    js = nc.jetstream()
    rules = tmp_path / "rules.yaml"
    rules.write_text(SPIKE_RULES)
    host = "skewed-0"
    partition = host_partition(host, PARTITIONS)

    async def send(spike: float) -> None:
        batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="spike", value=spike)])
        await js.publish(nats_config.subjects.metrics(host), encode(batch), timeout=2)

    a = EvaluatorService(config(nats_config, rules, "a"), clock=lambda: time.time() + 30)
    b = EvaluatorService(config(nats_config, rules, "b"))
    await a.start()
    try:
        assert partition in a.describe()["replica"]["judged"]

        def offset_known() -> bool:  # a's announcement read back, with the server's time of it
            return abs(value(a.registry, "signalfire_evaluator_clock_offset_seconds") - 30) < 1

        await eventually(offset_known, "a's clock offset, 30 s, to be measured", 10)
        skewed = [r for r in caplog.records if r.getMessage().startswith("this replica's clock is off")]
        assert [getattr(r, "replica", None) for r in skewed] == ["a"]  # warned of, once
        for _ in range(4):  # judged by a
            await send(0.0)
            await asyncio.sleep(0.25)
        assert a._nc is not None and a._lease_nc is not None
        # a dies as far as the bus can tell: no renewal, no release, no alert
        await a._lease_nc.close()
        await a._nc.close()
        await asyncio.sleep(0.3)
        await send(99.0)  # in the gap: nobody judges it now
        await send(0.0)
        await b.start()

        def taken() -> bool:
            return partition in b.describe()["replica"]["judged"]

        await eventually(taken, "replica b to take the dead owner's partition", 20)
        kv = await js.key_value(nats_config.subjects.bucket("evaluator_leases"))

        async def offsets_shown() -> dict[str, float | None]:
            replicas = ownership(await read_bucket(kv), time.time())["replicas"]
            return {r: replicas.get(r, {}).get("clock_offset") for r in ("a", "b")}

        async def both_shown() -> bool:
            return None not in (await offsets_shown()).values()

        # what `evaluator status` shows: a's last announcement 30 s ahead, b's on time
        await eventually(both_shown, "both replicas' clock offsets in the leases bucket", 10)
        shown = await offsets_shown()
        a_off, b_off = shown["a"], shown["b"]
        assert a_off is not None and b_off is not None, shown
        assert abs(a_off - 30) < 1 and abs(b_off) < 1, shown

        events = await events_after_resolve(js, nats_config, "the gap's spike to fire on b and resolve", 10)
    finally:
        await b.stop()
        with contextlib.suppress(Exception):
            await a.stop()
    assert [(e.host, e.status) for e in events] == [(host, "firing"), (host, "resolved")], events
    assert events[0].value == 99.0 and events[0].id == events[1].id
