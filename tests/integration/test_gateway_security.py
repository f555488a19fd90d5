"""The gateway's smaller security guarantees, against a running gateway, real NATS and
PostgreSQL: revoked tokens lose their open streams, no token reaches the log, refused calls
are audited, CSV exports do not carry formulas, failed authentications are throttled per
address, and host names with URL-reserved characters can be opened."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import websockets
from devstack import NatsServer, free_port, start_gateway
from websockets.exceptions import ConnectionClosed

from signalfire.bus import NatsConfig
from signalfire.events import Event, EventBatch, MetricBatch, Sample, encode
from signalfire.gateway.auth import create_token
from tests.integration.gateway_support import (
    RunningGateway,
    eventually,
    gateway_config,
    run_cli,
    running_gateway,
)


def stream_url(gw: RunningGateway, query: str = "") -> str:
    return gw.url.replace("http://", "ws://") + "/api/v1/stream" + (f"?{query}" if query else "")


def bearer_subprotocols(token: str) -> list[Any]:
    return ["signalfire.v1", f"signalfire.bearer.{token}"]


async def hello(ws: Any) -> dict[str, Any]:
    """Subscribe to everything and return the gateway's first frame."""
    await ws.send(json.dumps({"subscribe": {}}))
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert isinstance(first, dict) and first["kind"] == "hello"  # a bare object, as documented
    return first


async def closed_with(ws: Any, timeout: float) -> tuple[int | None, str | None]:
    """Read (heartbeats, frames) until the gateway closes ``ws``; returns its code and reason."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None)
    except TimeoutError:
        pytest.fail(f"the stream was still open after {timeout}s")


async def sse_lines(client: httpx.AsyncClient, url: str, **kwargs: Any) -> AsyncGenerator[str, None]:
    async with client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            yield line


async def sse_until_end(lines: AsyncIterator[str], timeout: float) -> list[str]:
    """Every line of an SSE stream until the gateway ends it."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            async for line in lines:
                seen.append(line)
    except TimeoutError:
        pytest.fail(f"the SSE stream was still open after {timeout}s; got {seen}")
    return seen


async def token_id(pool_url: str, name: str) -> int:
    conn = await asyncpg.connect(pool_url)
    try:
        found: int = await conn.fetchval("SELECT id FROM api_tokens WHERE name = $1", name)
        return found
    finally:
        await conn.close()


# Item 5: revoked tokens lose their open streams ----------------------------------------------


async def test_revoking_a_token_closes_its_open_websocket_and_sse_streams_at_once(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        assert gw.service.pool is not None
        viewer = await create_token(gw.service.pool, "wallboard", "viewer")
        viewer_id = await token_id(database_url, "wallboard")
        async with (
            websockets.connect(stream_url(gw), subprotocols=bearer_subprotocols(viewer)) as ws,
            websockets.connect(stream_url(gw, f"token={viewer}")) as legacy_ws,
            websockets.connect(stream_url(gw), subprotocols=bearer_subprotocols(gw.token)) as admin_ws,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as plain,
            gw.client() as admin,
        ):
            assert ws.subprotocol == "signalfire.v1"
            for socket in (ws, legacy_ws, admin_ws):
                await hello(socket)
            sse = sse_lines(plain, "/api/v1/events/stream", params={"token": viewer})
            assert await anext(sse) == "event: hello"

            revoked_at = time.monotonic()
            response = await admin.delete(f"/api/v1/tokens/{viewer_id}")
            assert response.status_code == 200, response.text

            assert await closed_with(ws, timeout=2) == (4401, "token revoked")
            assert await closed_with(legacy_ws, timeout=2) == (4401, "token revoked")
            rest = await sse_until_end(sse, timeout=2)
            assert time.monotonic() - revoked_at < 2
            error = rest[rest.index("event: error") + 1]
            assert json.loads(error.removeprefix("data: "))["code"] == "token_revoked"

            # Other tokens' streams go on.
            await admin_ws.send(json.dumps({"subscribe": {"hosts": ["nobody"]}}))
            await admin_ws.ping()
            assert admin_ws.close_code is None
            # And the revoked token cannot open a new one.
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(stream_url(gw), subprotocols=bearer_subprotocols(viewer))
            assert refused.value.response.status_code == 401
        assert gw.service.hub.clients_revoked == 3


async def test_streams_of_a_token_revoked_by_the_cli_or_deleted_end_within_the_recheck_interval(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(nats_config, database_url, tmp_path, stream_token_recheck=0.5)
    async with running_gateway(config) as gw:
        assert gw.service.pool is not None
        by_cli = await create_token(gw.service.pool, "laptop", "viewer")
        deleted = await create_token(gw.service.pool, "old-script", "operator")
        async with (
            websockets.connect(stream_url(gw), subprotocols=bearer_subprotocols(by_cli)) as cli_ws,
            websockets.connect(stream_url(gw), subprotocols=bearer_subprotocols(deleted)) as deleted_ws,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as plain,
        ):
            await hello(cli_ws)
            await hello(deleted_ws)
            sse = sse_lines(plain, "/api/v1/events/stream", params={"token": deleted})
            assert await anext(sse) == "event: hello"

            # `signalfire token revoke` talks to the database only, like another replica would.
            revoke = await asyncio.to_thread(
                run_cli, database_url, "token", "revoke", str(await token_id(database_url, "laptop"))
            )
            assert revoke.returncode == 0, revoke.stderr
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("DELETE FROM api_tokens WHERE name = 'old-script'")
            finally:
                await conn.close()

            assert await closed_with(cli_ws, timeout=3) == (4401, "token revoked")
            assert await closed_with(deleted_ws, timeout=3) == (4401, "token revoked")
            assert "event: error" in await sse_until_end(sse, timeout=3)


# Item 7: no token in the log -----------------------------------------------------------------


async def test_no_token_reaches_the_gateway_log(
    nats_server: NatsServer, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    gateway = await asyncio.to_thread(
        start_gateway,
        nats_server.url,
        database_url,
        port,
        log_dir=tmp_path,
        token_file=tmp_path / "admin-token",
        extra_env={"SF_NATS_PREFIX": nats_config.prefix, "SF_LOG_LEVEL": "info"},
    )
    guessed = "guessed-" + "x" * 40

    def assert_no_token_logged() -> None:
        log = gateway.log_path.read_text()
        # The WebSocket access lines are there (so the check is not vacuous), without the token.
        assert '"WebSocket /api/v1/stream' in log
        assert admin not in log
        assert guessed not in log

    try:
        admin = (tmp_path / "admin-token").read_text().strip()
        base = f"http://127.0.0.1:{port}"
        ws_base = f"ws://127.0.0.1:{port}/api/v1/stream"
        # The query token, kept for clients that cannot offer subprotocols.
        async with websockets.connect(f"{ws_base}?token={admin}") as ws:
            await hello(ws)
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"{ws_base}?token={guessed}")
        async with httpx.AsyncClient(base_url=base, timeout=10) as plain:
            sse = sse_lines(plain, f"/api/v1/events/stream?hosts=a&token={admin}")
            assert await anext(sse) == "event: hello"
            await sse.aclose()
            assert (await plain.get(f"/api/v1/hosts?token={admin}")).status_code == 401
            bad = await plain.post(
                "/api/v1/silences", headers={"Authorization": f"Bearer {guessed}"}, json={}
            )
            assert bad.status_code == 401
        await asyncio.sleep(0.2)  # the close lines
        assert_no_token_logged()
        # The dashboard's way: the token as a subprotocol, in no URL at all.
        async with websockets.connect(ws_base, subprotocols=bearer_subprotocols(admin)) as ws:
            await hello(ws)
    finally:
        await asyncio.to_thread(gateway.stop)
    assert_no_token_logged()


# Item 8a: refused calls are audited ----------------------------------------------------------


async def test_refused_state_changing_calls_are_audited_as_denied(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        assert gw.service.pool is not None
        viewer = await create_token(gw.service.pool, "dash", "viewer")
        former = await create_token(gw.service.pool, "former-oncall", "operator")
        async with gw.client() as admin:
            former_id = await token_id(database_url, "former-oncall")
            assert (await admin.delete(f"/api/v1/tokens/{former_id}")).status_code == 200
        async with (
            gw.client(viewer) as as_viewer,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as anonymous,
        ):
            assert (await as_viewer.post("/api/v1/alerts/a1/ack")).status_code == 403
            assert (await as_viewer.get("/api/v1/tokens")).status_code == 403  # a read: not audited
            assert (await anonymous.delete("/api/v1/silences/s1")).status_code == 401
            forged = {"Authorization": "Bearer not-a-token"}
            assert (await anonymous.post("/api/v1/tokens", headers=forged, json={})).status_code == 401
            revoked = {"Authorization": f"Bearer {former}"}
            assert (await anonymous.post("/api/v1/alerts/a2/resolve", headers=revoked)).status_code == 401
        async with gw.client() as admin:
            entries = (await admin.get("/api/v1/audit")).json()["audit"]
        denied = [e for e in entries if e["details"].get("outcome") == "denied"]
        summary = [(e["actor"], e["action"], e["target"], e["status"]) for e in reversed(denied)]
        viewer_id = await token_id(database_url, "dash")
        # Sorted: each refusal's audit row is written as its request ends, so two rows written
        # within the same moment may list in either order.
        assert sorted(summary) == sorted(
            [
                (
                    f"dash (token {viewer_id}, viewer)",
                    "POST /api/v1/alerts/{id}/{action}",
                    "/api/v1/alerts/a1/ack",
                    403,
                ),
                ("no token", "DELETE /api/v1/silences/{id}", "/api/v1/silences/s1", 401),
                ("unknown token", "POST /api/v1/tokens", "/api/v1/tokens", 401),
                (
                    f"former-oncall (token {former_id}, revoked)",
                    "POST /api/v1/alerts/{id}/{action}",
                    "/api/v1/alerts/a2/resolve",
                    401,
                ),
            ]
        )
        assert all(e["source"] == "127.0.0.1" and e["details"]["reason"] for e in denied)
        # The allowed call says so too.
        assert any(
            e["action"] == "DELETE /api/v1/tokens/{id}" and e["details"]["outcome"] == "ok" for e in entries
        )


async def test_a_call_is_not_answered_before_its_audit_record_is_written(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """An auditor (or a script) that reads the log right after a call returned finds the
    call: the record is written before the response's last part leaves. Held up here by a
    lock on the table, the call waits for its record instead of answering first."""
    async with (
        running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw,
        gw.client() as caller,
        gw.client() as auditor,
    ):
        target = "/api/v1/alerts/held-up/ack"
        holder = await asyncpg.connect(database_url)
        try:
            locked = holder.transaction()
            await locked.start()
            await holder.execute("LOCK TABLE audit IN EXCLUSIVE MODE")
            call = asyncio.create_task(caller.post(target))
            await asyncio.sleep(0.5)
            assert not call.done(), "the call answered before its audit record was written"
            await locked.rollback()
        finally:
            await holder.close()
        assert (await call).status_code == 404
        entries = (await auditor.get("/api/v1/audit", params={"limit": 5})).json()["audit"]
        assert [(e["target"], e["status"]) for e in entries][:1] == [(target, 404)]


# Item 8b: no formulas in CSV -----------------------------------------------------------------


async def test_csv_export_neutralises_spreadsheet_formulas_but_keeps_numbers(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    formula = '=HYPERLINK("http://x","y")'
    now = time.time()
    js = nc.jetstream()
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        batch = EventBatch(
            host="web-1",
            time=now,
            events=[
                Event(type="deploy", time=now, message=formula, labels={"by": "@evil"}, value=-1.5),
                Event(type="note", time=now + 1, message="-2+3|cmd", value=2.0),
                Event(type="note", time=now + 2, message="\tTAB", value=None),
            ],
        )
        await js.publish(nats_config.subjects.events("web-1"), encode(batch))
        metrics = MetricBatch(
            host="web-1", time=now, labels={"team": "+SUM(A1)"}, samples=[Sample(name="temp", value=-1.5)]
        )
        await js.publish(nats_config.subjects.metrics("web-1"), encode(metrics))

        async def stored() -> None:
            assert gw.counter("ingest_messages_total", kind="events") >= 1
            assert gw.counter("ingest_messages_total", kind="metrics") >= 1

        await eventually(stored)
        async with gw.client() as api:
            window = {"from": str(now - 60), "to": str(now + 60)}
            events_csv = (await api.get("/api/v1/export", params={"kind": "events", **window})).text
            samples_csv = (await api.get("/api/v1/export", params={"kind": "samples", **window})).text
            events_json = await api.get(
                "/api/v1/export", params={"kind": "events", "format": "json", **window}
            )
        events = list(csv.DictReader(io.StringIO(events_csv)))
        assert [e["message"] for e in events] == ["'" + formula, "'-2+3|cmd", "'\tTAB"]
        assert [e["value"] for e in events] == ["-1.5", "2.0", ""]
        assert json.loads(events[0]["labels"]) == {"by": "@evil"}  # a JSON object: starts with "{"
        [sample] = list(csv.DictReader(io.StringIO(samples_csv)))
        assert sample["value"] == "-1.5"
        assert float(sample["value"]) == -1.5
        # JSON is for programs, not spreadsheets: it carries the text as it was sent.
        assert events_json.json()[0]["message"] == formula


# Item 8c: failed authentications are throttled per address ------------------------------------


async def test_failed_authentications_are_throttled_per_address_and_valid_users_keep_working(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(nats_config, database_url, tmp_path, auth_failure_rate=2.0, auth_failure_burst=5)
    async with running_gateway(config) as gw:
        assert gw.service.pool is not None
        newcomer = await create_token(gw.service.pool, "newcomer", "viewer")
        bad = {"Authorization": "Bearer wrong"}
        other_address = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with (
            gw.client() as admin,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as attacker,
            httpx.AsyncClient(base_url=gw.url, timeout=10, transport=other_address) as elsewhere,
        ):
            assert (await admin.get("/api/v1/whoami")).status_code == 200  # the admin token is known-good
            started = time.monotonic()
            statuses = [(await attacker.get("/api/v1/hosts", headers=bad)).status_code for _ in range(40)]
            elapsed = time.monotonic() - started
            assert statuses[:5] == [401] * 5
            # Beyond the burst, only what the bucket refilled (2 a second) was looked up.
            assert set(statuses[5:]) <= {401, 429}
            assert statuses.count(401) <= 5 + 2 * elapsed + 1
            throttled = await attacker.get("/api/v1/hosts", headers=bad)
            assert throttled.status_code == 429
            assert throttled.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(throttled.headers["Retry-After"]) <= 1
            # The same address with a token that worked before is served ...
            assert (await admin.get("/api/v1/whoami")).status_code == 200
            # ... one never seen here waits like the failures do (documented) ...
            first_use = await attacker.get("/api/v1/whoami", headers={"Authorization": f"Bearer {newcomer}"})
            assert first_use.status_code == 429
            # ... and another address is not affected at all.
            assert (await elsewhere.get("/api/v1/hosts", headers=bad)).status_code == 401
            welcome = await elsewhere.get("/api/v1/whoami", headers={"Authorization": f"Bearer {newcomer}"})
            assert welcome.status_code == 200
            await asyncio.sleep(float(throttled.headers["Retry-After"]))
            assert (await attacker.get("/api/v1/hosts", headers=bad)).status_code == 401
        assert gw.counter("auth_throttled_total") == statuses.count(429) + 2
        assert gw.counter("auth_failures_total", reason="invalid") == statuses.count(401) + 2
        async with gw.client() as admin:
            metrics = (await admin.get("/metrics")).text
        assert "signalfire_gateway_auth_throttled_total" in metrics


# Host names with URL-reserved characters -----------------------------------------------------

ODD_HOSTS = ("web-1.example.com", "50% full", "rack 7 node", "db#2", "what?", "a+b&c=d", "ünïcode")


async def test_host_endpoints_answer_for_names_with_url_reserved_characters(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    now = time.time()
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        for i, host in enumerate(ODD_HOSTS):
            batch = MetricBatch(
                host=host, time=now, samples=[Sample(name="cpu.usage_percent", value=float(i))]
            )
            await js.publish(nats_config.subjects.metrics(host), encode(batch))

        async def stored() -> None:
            assert gw.counter("ingest_messages_total", kind="metrics") >= len(ODD_HOSTS)

        await eventually(stored)
        async with gw.client() as api:
            for i, host in enumerate(ODD_HOSTS):
                page = await api.get(f"/api/v1/hosts/{quote(host, safe='')}")
                assert page.status_code == 200, (host, page.text)
                assert page.json()["host"] == host
                assert [s["value"] for s in page.json()["latest"]] == [float(i)]
                latest = (await api.get("/api/v1/latest", params={"host": host})).json()["samples"]
                assert [s["host"] for s in latest] == [host]
                series = (
                    await api.get(
                        "/api/v1/query", params={"host": host, "metric": "cpu.usage_percent", "step": "raw"}
                    )
                ).json()["series"]
                assert [s["host"] for s in series] == [host]
            missing = await api.get(f"/api/v1/hosts/{quote('no such?host', safe='')}")
            assert missing.status_code == 404
