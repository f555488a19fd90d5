"""The gateway's HTTP API against a running gateway, real NATS and real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from signalfire.bus import NatsConfig
from signalfire.events import AgentStatus, AlertEvent, MetricBatch, Sample, encode
from signalfire.gateway.auth import create_token
from tests.integration.gateway_support import (
    RunningGateway,
    eventually,
    gateway_config,
    run_cli,
    running_gateway,
)
from tests.support.metrics import buckets, families, openmetrics_families, samples, total


def metric_batch(host: str, when: float, cpu: float) -> MetricBatch:
    return MetricBatch(
        host=host,
        time=when,
        labels={"env": "prod"},
        samples=[
            Sample(name="cpu.usage_percent", value=cpu),
            Sample(name="disk.used_percent", value=71.2, labels={"mount": "/"}),
            Sample(name="disk.used_percent", value=33.0, labels={"mount": "/var"}),
        ],
    )


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    return error


async def until_stored(gw: RunningGateway, kind: str, n: int) -> None:
    async def stored() -> None:
        assert gw.counter("ingest_messages_total", kind=kind) >= n

    await eventually(stored)


async def test_a_published_batch_can_be_queried(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    now = time.time()
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        for i, cpu in enumerate((10.0, 20.0, 30.0)):
            await js.publish(
                nats_config.subjects.metrics("web-1"), encode(metric_batch("web-1", now - 20 + i * 5, cpu))
            )
        await js.publish(nats_config.subjects.metrics("db-1"), encode(metric_batch("db-1", now, 99.0)))
        await until_stored(gw, "metrics", 4)
        async with gw.client() as api:
            answer = (
                await api.get(
                    "/api/v1/query", params={"host": "web-1", "metric": "cpu.usage_percent", "step": "raw"}
                )
            ).json()
            assert answer["step"] == 0
            assert answer["source"] == "raw"
            [series] = answer["series"]
            assert series["host"] == "web-1"
            assert series["metric"] == "cpu.usage_percent"
            assert series["labels"] == {"env": "prod"}
            assert [v for _, v in series["points"]] == [10.0, 20.0, 30.0]
            assert series["points"][0][0] == pytest.approx(now - 20, abs=1e-3)

            both = (
                await api.get("/api/v1/query", params={"metric": "cpu.usage_percent", "step": "raw"})
            ).json()
            assert {s["host"] for s in both["series"]} == {"web-1", "db-1"}

            by_label = (
                await api.get(
                    "/api/v1/query",
                    params={"metric": "disk.used_percent", "label.mount": "/var", "step": "raw"},
                )
            ).json()
            assert {(s["host"], s["labels"]["mount"]) for s in by_label["series"]} == {
                ("web-1", "/var"),
                ("db-1", "/var"),
            }

            recent = await api.get(
                "/api/v1/query",
                params={"host": "web-1", "metric": "cpu.usage_percent", "from": "-12s", "step": "raw"},
            )
            assert [v for _, v in recent.json()["series"][0]["points"]] == [30.0]

            window = await api.get(
                "/api/v1/query",
                params={
                    "host": "web-1",
                    "metric": "cpu.usage_percent",
                    "from": str(now - 21),
                    "to": str(now - 14),
                    "step": "raw",
                },
            )
            assert [v for _, v in window.json()["series"][0]["points"]] == [10.0, 20.0]

            nothing = await api.get("/api/v1/query", params={"metric": "no.such_metric"})
            assert nothing.json()["series"] == []

            # 5-minute steps: from the 5-minute rollups (their last minutes from the raw samples),
            # but a percentile from the minutes' histograms (the 5-minute rows keep none)
            for agg, source in (("count", "5m"), ("max", "5m"), ("p95", "1m")):
                answer = (
                    await api.get(
                        "/api/v1/query",
                        params={"host": "web-1", "metric": "cpu.usage_percent", "step": "5m", "agg": agg},
                    )
                ).json()
                assert answer["source"] == source, agg
                values = [v for _, v in answer["series"][0]["points"]]
                if agg == "count":
                    assert sum(values) == 3
                else:
                    assert max(values) == 30.0, agg


async def test_bad_query_parameters_are_400s_naming_the_field(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        assert_error(await api.get("/api/v1/query"), 400, "invalid_parameter", "metric")
        assert_error(
            await api.get("/api/v1/query?metric=cpu&from=yesterday"), 400, "invalid_parameter", "from"
        )
        assert_error(
            await api.get("/api/v1/query?metric=cpu&to=2025-01-01T00:00:00"), 400, "invalid_parameter", "to"
        )
        assert_error(
            await api.get("/api/v1/query?metric=cpu&from=-1h&to=-2h"), 400, "invalid_parameter", "from"
        )
        assert_error(
            await api.get("/api/v1/query?metric=cpu&step=5%20minutes"), 400, "invalid_parameter", "step"
        )
        assert_error(await api.get("/api/v1/alerts?status=open"), 400, "invalid_parameter", "status")
        assert_error(await api.get("/api/v1/alerts?severity=urgent"), 400, "invalid_parameter", "severity")
        assert_error(await api.get("/api/v1/alerts?limit=0"), 400, "invalid_parameter", "limit")


async def test_too_many_points_is_a_clear_error(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(nats_config, database_url, tmp_path, query_max_points=2)
    async with running_gateway(config) as gw:
        now = time.time()
        for i in range(3):
            await nc.jetstream().publish(
                nats_config.subjects.metrics("web-1"), encode(metric_batch("web-1", now - i, 1.0))
            )
        await until_stored(gw, "metrics", 3)
        async with gw.client() as api:
            error = assert_error(
                await api.get("/api/v1/query?metric=cpu.usage_percent&step=raw"),
                400,
                "too_many_points",
                "from",
            )
            assert "narrow" in error["message"]


async def test_the_api_needs_a_valid_token(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as anonymous:
            for path in ("/api/v1/hosts", "/api/v1/query?metric=cpu", "/api/v1/alerts", "/api/v1/nope"):
                response = await anonymous.get(path)
                assert_error(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")
            bad = await anonymous.get("/api/v1/hosts", headers={"Authorization": "Bearer not-a-token"})
            assert "not valid" in assert_error(bad, 401, "unauthorized")["message"]
            basic = await anonymous.get("/api/v1/hosts", headers={"Authorization": "Basic dXNlcjpwYXNz"})
            assert_error(basic, 401, "unauthorized")
            # ?token= is for the stream endpoints only (browsers cannot set their headers);
            # elsewhere it would end up in access logs and proxies' caches.
            by_query = await anonymous.get("/api/v1/hosts", params={"token": gw.token})
            assert_error(by_query, 401, "unauthorized")
            # health, readiness and metrics stay open for probes and scrapers
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await anonymous.get(path)).status_code == 200, path

        pool = gw.service.pool
        assert pool is not None
        viewer = await create_token(pool, "dashboard", "viewer")
        async with gw.client(viewer) as api:
            assert (await api.get("/api/v1/hosts")).status_code == 200
            assert_error(await api.post("/api/v1/hosts"), 403, "forbidden")
        await pool.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = 'dashboard'")
        async with gw.client(viewer) as api:
            assert_error(await api.get("/api/v1/hosts"), 401, "unauthorized")


async def test_the_first_start_writes_an_admin_token_once(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(nats_config, database_url, tmp_path / "state")
    token_file = Path(config.admin_token_file)
    async with running_gateway(config) as gw:
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        first = gw.token
        async with gw.client() as api:
            assert (await api.get("/api/v1/hosts")).status_code == 200
    async with running_gateway(config) as gw:
        assert gw.token == first  # not replaced on the next start
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetch("SELECT hash FROM api_tokens")
    finally:
        await conn.close()
    assert len(stored) == 1
    assert first not in stored[0]["hash"]


async def test_unknown_routes_and_methods_are_json(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        assert_error(await api.get("/nope"), 404, "not_found")
        assert_error(await api.get("/api/v1/nope"), 404, "not_found")
        assert_error(await api.post("/healthz"), 405, "method_not_allowed")


async def test_health_readiness_and_metrics(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await nc.jetstream().publish(nats_config.subjects.metrics("web-1"), b"garbage")
        await nc.jetstream().publish(
            nats_config.subjects.metrics("web-1"), encode(metric_batch("web-1", time.time(), 5.0))
        )
        await until_stored(gw, "metrics", 1)
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            page = await http.get("/metrics")
            openmetrics = await http.get(
                "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
        assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(page.text)  # prometheus_client's parser: the page must parse
        assert total(found, "signalfire_gateway_ingest_messages_total", kind="metrics") == 1
        assert total(found, "signalfire_gateway_ingest_samples_total") == 3
        assert total(found, "signalfire_gateway_ingest_rejected_total", reason="invalid_payload") == 1
        requests = "signalfire_gateway_http_requests_total"
        assert total(found, requests, method="GET", route="/readyz", status="200") == 1
        # histograms with buckets: the HTTP requests answered, the round that stored the batch
        pages = families(page.text)
        duration = pages["signalfire_gateway_http_request_duration_seconds"]
        assert duration.type == "histogram"
        readyz = buckets(duration, method="GET", route="/readyz")
        assert len(readyz) > 1 and readyz[-1] == (float("inf"), 1.0)
        assert [count for _, count in readyz] == sorted(count for _, count in readyz)  # cumulative
        for name in ("signalfire_gateway_ingest_write_seconds", "signalfire_gateway_ingest_lag_seconds"):
            assert pages[name].type == "histogram"
            stored = buckets(pages[name], consumer="gateway-metrics")
            assert stored[-1] == (float("inf"), 1.0), name  # one round stored one message
            assert total(found, f"{name}_sum", consumer="gateway-metrics") >= 0
        # a scraper asking for OpenMetrics gets it, with the same samples
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")
        parsed = openmetrics_families(openmetrics.text)
        assert parsed["signalfire_gateway_ingest_lag_seconds"].type == "histogram"

        # NATS gone: the gateway is alive but not ready
        assert gw.service.nc is not None
        await gw.service.nc.close()
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.get("/healthz")).status_code == 200
            not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503
        assert any("nats" in reason for reason in not_ready.json()["reasons"])
        assert not_ready.json()["error"]["code"] == "not_ready"


async def test_hosts_report_status_and_firing_alerts(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    s = nats_config.subjects
    now = time.time()
    facts = {"os": "Linux", "cpu_count": 8}
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await js.publish(s.agents("web-1"), encode(_status("web-1", "online", now - 2, facts)))
        await js.publish(s.metrics("web-1"), encode(metric_batch("web-1", now, 10.0)))
        await js.publish(s.metrics("old-1"), encode(metric_batch("old-1", now - 3600, 10.0)))
        await js.publish(s.agents("gone-1"), encode(_status("gone-1", "online", now - 20, {})))
        await js.publish(s.agents("gone-1"), encode(_status("gone-1", "offline", now - 10, {})))
        for i, severity in enumerate(("critical", "high", "high")):
            await js.publish(s.alerts("web-1"), encode(_alert(f"a{i}", "web-1", severity, now)))
        await until_stored(gw, "metrics", 2)
        await until_stored(gw, "agents", 3)
        await until_stored(gw, "alerts", 3)
        async with gw.client() as api:
            hosts = {h["host"]: h for h in (await api.get("/api/v1/hosts")).json()["hosts"]}
            alerts = (await api.get("/api/v1/alerts", params={"host": "web-1", "severity": "high"})).json()
            limited = (await api.get("/api/v1/alerts", params={"limit": "1"})).json()
            # The dashboard fetches again only the hosts that changed.
            named = (await api.get("/api/v1/hosts", params={"host": ["web-1", "gone-1", "nobody"]})).json()
            too_many = await api.get("/api/v1/hosts", params={"host": [f"h{i}" for i in range(1001)]})
    assert [h["host"] for h in named["hosts"]] == ["gone-1", "web-1"]
    assert named["hosts"][1]["alerts"] == {"critical": 1, "high": 2, "medium": 0, "low": 0}
    assert too_many.status_code == 400 and too_many.json()["error"]["field"] == "host"
    assert hosts["web-1"]["status"] == "up"
    assert hosts["web-1"]["facts"] == facts
    assert hosts["web-1"]["labels"] == {"role": "web"}
    assert hosts["web-1"]["last_seen"] == pytest.approx(now, abs=1e-3)
    assert hosts["web-1"]["alerts"] == {"critical": 1, "high": 2, "medium": 0, "low": 0}
    assert hosts["old-1"]["status"] == "down"
    assert hosts["gone-1"]["status"] == "offline"
    assert {a["id"] for a in alerts["alerts"]} == {"a1", "a2"}
    assert alerts["alerts"][0]["annotations"] == {"summary": "it burns"}
    assert len(limited["alerts"]) == 1


async def test_the_fleet_is_one_answer_worst_first_with_the_totals_of_every_host(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    s = nats_config.subjects
    now = time.time()
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await js.publish(s.agents("web-1"), encode(_status("web-1", "online", now - 2, {"os": "Linux"})))
        for host, cpu in (("web-1", 10.0), ("web-2", 95.0), ("web-3", 20.0)):
            await js.publish(s.metrics(host), encode(metric_batch(host, now, cpu)))
        await js.publish(s.metrics("old-1"), encode(metric_batch("old-1", now - 3600, 10.0)))
        for i, severity in enumerate(("critical", "high", "high")):
            await js.publish(s.alerts("web-1"), encode(_alert(f"a{i}", "web-1", severity, now)))
        await js.publish(s.alerts("web-3"), encode(_alert("b0", "web-3", "critical", now)))
        await until_stored(gw, "metrics", 4)
        await until_stored(gw, "alerts", 4)
        async with gw.client() as api:
            fleet = (await api.get("/api/v1/fleet")).json()
            hosts = {h["host"]: h for h in (await api.get("/api/v1/hosts")).json()["hosts"]}
            refused = await api.post("/api/v1/fleet")
    columns = fleet["hosts"]
    # Worst first: down (0), then web-1 (100 - 40 - 2 * 20 = 20), web-3 (60), web-2 (100 - 15 for CPU).
    assert columns["host"] == ["old-1", "web-1", "web-3", "web-2"]
    assert columns["health"] == [0, 20, 60, 85]
    assert columns["status"] == ["down", "up", "up", "up"]
    assert fleet["total"] == 4
    assert fleet["status"] == {"up": 3, "down": 1, "offline": 0}
    assert fleet["alerts"] == {"critical": 2, "high": 2, "medium": 0, "low": 0}
    assert columns["alerts"]["critical"] == [0, 1, 1, 0] and columns["alerts"]["high"] == [0, 2, 0, 0]
    # The fullest disk, and no memory value where none was sent.
    assert columns["usage"]["disk.used_percent"] == [71.2] * 4
    assert columns["usage"]["cpu.usage_percent"] == [10.0, 10.0, 20.0, 95.0]
    assert columns["usage"]["mem.used_percent"] == [None] * 4
    # Each host says what /api/v1/hosts says of it; equal label sets are sent once.
    for i, name in enumerate(columns["host"]):
        host = hosts[name]
        assert (host["health"], host["status"], host["last_seen"]) == (
            columns["health"][i],
            columns["status"][i],
            columns["last_seen"][i],
        )
        assert columns["label_sets"][columns["labels"][i]] == host["labels"]
    assert len(columns["label_sets"]) == len({msgspec.json.encode(h["labels"]) for h in hosts.values()})
    assert refused.status_code == 405


def _status(host: str, status: str, when: float, facts: dict[str, Any]) -> AgentStatus:
    return msgspec.convert(
        {
            "host": host,
            "status": status,
            "time": when,
            "interval": 5.0,
            "facts": facts,
            "labels": {"role": "web"},
        },
        AgentStatus,
    )


def _alert(alert_id: str, host: str, severity: str, now: float) -> AlertEvent:
    return msgspec.convert(
        {
            "id": alert_id,
            "fingerprint": f"fp-{alert_id}",
            "rule": "HighCPU",
            "status": "firing",
            "severity": severity,
            "host": host,
            "starts_at": now - 60,
            "time": now - 60,
            "annotations": {"summary": "it burns"},
        },
        AlertEvent,
    )


def test_db_migrate_and_token_create_commands(database_url: str) -> None:
    first = run_cli(database_url, "db", "migrate")
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    again = run_cli(database_url, "db", "migrate")
    assert again.returncode == 0, again.stderr
    assert "already up to date" in again.stdout

    created = run_cli(database_url, "token", "create", "--name", "grafana", "--role", "viewer")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) >= 43

    bad_role = run_cli(database_url, "token", "create", "--name", "x", "--role", "root")
    assert bad_role.returncode == 2
    assert "--role" in bad_role.stderr


def test_an_unreachable_database_is_a_one_line_error() -> None:
    from devstack import free_port

    result = run_cli(f"postgresql://nobody@127.0.0.1:{free_port()}/none", "db", "migrate")
    assert result.returncode == 1
    assert result.stderr.startswith("signalfire: ")
    assert "Traceback" not in result.stderr


def test_token_create_inside_the_repository_finds_the_dev_stack(database_url: str, tmp_path: Path) -> None:
    from devstack import write_tool_env

    # What `make up` writes while it runs, in a repository the command is run inside of.
    (tmp_path / ".signalfire").mkdir()
    write_tool_env(tmp_path / ".signalfire" / "env", {"SF_DATABASE_URL": database_url})
    (tmp_path / "rules").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SF_DATABASE_URL"}
    created = subprocess.run(
        [sys.executable, "-m", "signalfire.cli", "token", "create", "--name", "me", "--role", "admin"],
        env=env,
        cwd=tmp_path / "rules",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    assert len(created.stdout.strip()) >= 43


def test_an_unreachable_database_says_what_to_set(tmp_path: Path) -> None:
    from devstack import free_port

    env = {k: v for k, v in os.environ.items() if k != "SF_DATABASE_URL"}
    outside = subprocess.run(
        [sys.executable, "-m", "signalfire.cli", "token", "list"],
        env={**env, "SF_DATABASE_URL": f"postgresql://sf:secret@127.0.0.1:{free_port()}/signalfire"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert outside.returncode == 1
    [line] = outside.stderr.splitlines()
    assert line.startswith("signalfire: cannot connect to the database postgresql://sf:***@127.0.0.1:")
    assert "(SF_DATABASE_URL)" in line and "Set SF_DATABASE_URL" in line and "make up" in line
    assert "secret" not in line


async def test_fleet_charts_held_up_in_the_database_leave_ingest_its_connections(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """Range queries and exports hold at most ``query_connections`` pooled connections at once
    (here: a pool of 4, less 2 for the in-process ingest's writers and 2 for the other writers
    = 1), so four fleet charts stuck behind a lock neither queue more statements than that nor
    keep a batch published meanwhile from being stored; an export waits its turn."""
    js = nc.jetstream()
    now = time.time()
    hosts = [f"fleet-{i:02}" for i in range(64)]  # two statements' worth (32 series each)
    config = gateway_config(nats_config, database_url, tmp_path)
    assert (config.db_pool_size, config.query_connections) == (4, 1)
    async with running_gateway(config) as gw:
        for host in hosts:
            await js.publish(nats_config.subjects.metrics(host), encode(metric_batch(host, now - 30, 40.0)))
        await until_stored(gw, "metrics", len(hosts))
        holder = await asyncpg.connect(database_url)
        try:
            lock = holder.transaction()
            await lock.start()
            await holder.execute("LOCK TABLE samples_5m IN ACCESS EXCLUSIVE MODE")
            async with gw.client() as api:
                params = {"metric": "cpu.usage_percent", "step": "5m"}
                charts = [asyncio.create_task(api.get("/api/v1/query", params=params)) for _ in range(4)]

                async def waiting() -> int:
                    """Statements waiting for the 5-minute rows (in parse or run)."""
                    return int(
                        await holder.fetchval(
                            "SELECT count(*) FROM pg_locks "
                            "WHERE relation = 'samples_5m'::regclass AND NOT granted"
                        )
                    )

                async def one_waits() -> None:
                    assert await waiting() == 1

                await eventually(one_waits)
                # an export (its connection held as long as its client reads) waits its turn too
                export = asyncio.create_task(
                    api.get("/api/v1/export", params={"kind": "samples", "format": "csv", "host": "fleet-00"})
                )
                await js.publish(
                    nats_config.subjects.metrics("late-1"), encode(metric_batch("late-1", now, 50.0))
                )
                await until_stored(gw, "metrics", len(hosts) + 1)  # stored while the charts wait
                assert await waiting() == 1
                assert not any(chart.done() for chart in [*charts, export])
                await lock.rollback()
                answers = await asyncio.gather(*charts)
                exported = await export
        finally:
            await holder.close()
    assert exported.status_code == 200 and "fleet-00" in exported.text, exported.text
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["source"] == "5m"
        # every host's series (late-1's too, where the chart looked its series up after it came)
        assert len(answer.json()["series"]) in (len(hosts), len(hosts) + 1)
