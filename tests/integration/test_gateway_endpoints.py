"""Every endpoint of the API with every role, the alert lifecycle, silences, tokens, audit,
limits and bad input, against a running gateway with real NATS and PostgreSQL."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from signalfire.bus import NatsConfig
from signalfire.events import AlertAction, AlertEvent, DeliveryResult, MetricBatch, Sample, encode
from signalfire.gateway.auth import create_token
from tests.integration.gateway_support import RunningGateway, eventually, gateway_config, running_gateway

# (method, path, body, least role, status for that role)
ENDPOINTS: list[tuple[str, str, Any, str, int]] = [
    ("GET", "/api/v1/hosts", None, "viewer", 200),
    ("GET", "/api/v1/hosts/web-1", None, "viewer", 200),
    ("GET", "/api/v1/series?metric=cpu.usage_percent", None, "viewer", 200),
    ("GET", "/api/v1/query?metric=cpu.usage_percent&agg=p95", None, "viewer", 200),
    ("GET", "/api/v1/latest", None, "viewer", 200),
    ("GET", "/api/v1/events", None, "viewer", 200),
    ("GET", "/api/v1/events/counts", None, "viewer", 200),
    ("GET", "/api/v1/metric-names", None, "viewer", 200),
    ("GET", "/api/v1/alerts", None, "viewer", 200),
    ("GET", "/api/v1/alerts/a-1", None, "viewer", 200),
    ("GET", "/api/v1/rules", None, "viewer", 503),  # no evaluator runs here
    ("GET", "/api/v1/silences", None, "viewer", 200),
    ("GET", "/api/v1/notifications", None, "viewer", 200),
    ("GET", "/api/v1/export?kind=samples", None, "viewer", 200),
    ("POST", "/api/v1/alerts/a-1/ack", {}, "operator", 200),
    ("POST", "/api/v1/alerts/a-1/unack", {"note": "not mine"}, "operator", 200),
    ("POST", "/api/v1/alerts/a-1/notes", {"note": "looking"}, "operator", 200),
    ("POST", "/api/v1/alerts/a-1/resolve", None, "operator", 200),
    (
        "POST",
        "/api/v1/silences",
        {"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h"},
        "operator",
        201,
    ),
    ("DELETE", "/api/v1/silences/none", None, "operator", 404),
    ("POST", "/api/v1/ingest/metrics", None, "operator", 202),
    ("POST", "/api/v1/ingest/events", None, "operator", 202),
    ("GET", "/api/v1/tokens", None, "admin", 200),
    ("POST", "/api/v1/tokens", {"name": "ci", "role": "viewer"}, "admin", 201),
    ("DELETE", "/api/v1/tokens/999999", None, "admin", 404),
    ("GET", "/api/v1/audit", None, "admin", 200),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}


def metrics_body(host: str = "web-1", when: float | None = None) -> dict[str, Any]:
    return {
        "host": host,
        "time": when or time.time(),
        "samples": [{"name": "cpu.usage_percent", "value": 42.0}],
    }


def events_body() -> dict[str, Any]:
    return {"host": "web-1", "time": time.time(), "events": [{"type": "deploy", "message": "v2"}]}


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


def alert(alert_id: str = "a-1", host: str = "web-1", seq: int = 1) -> AlertEvent:
    now = time.time()
    return AlertEvent(
        id=alert_id,
        fingerprint=f"fp-{alert_id}",
        rule="HighCPU",
        status="firing",
        severity="high",
        host=host,
        starts_at=now - 60,
        time=now - 60,
        value=91.0,
        threshold=80.0,
        seq=seq,
    )


async def seeded(gw: RunningGateway, nc: Any, nats_config: NatsConfig) -> None:
    js = nc.jetstream()
    s = nats_config.subjects
    await js.publish(s.alerts("web-1"), encode(alert()))
    batch = MetricBatch(
        host="web-1", time=time.time(), samples=[Sample(name="cpu.usage_percent", value=95.0)]
    )
    await js.publish(s.metrics("web-1"), encode(batch))

    async def stored() -> None:
        assert gw.counter("ingest_messages_total", kind="alerts") >= 1
        assert gw.counter("ingest_messages_total", kind="metrics") >= 1

    await eventually(stored)


async def test_every_endpoint_with_every_role(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await seeded(gw, nc, nats_config)
        assert gw.service.pool is not None
        tokens = {
            "viewer": await create_token(gw.service.pool, "v", "viewer"),
            "operator": await create_token(gw.service.pool, "o", "operator"),
            "admin": gw.token,
        }
        for role, token in tokens.items():
            async with gw.client(token) as api:
                for method, path, fixed_body, least, status in ENDPOINTS:
                    body = fixed_body
                    if path.startswith("/api/v1/ingest/metrics"):
                        body = metrics_body()
                    elif path.startswith("/api/v1/ingest/events"):
                        body = events_body()
                    response = await api.request(method, path, json=body)
                    if RANK[role] < RANK[least]:
                        assert_error(response, 403)
                        assert least in response.json()["error"]["message"]
                    else:
                        assert response.status_code == status, (role, method, path, response.text)
                        if response.headers["content-type"].startswith("application/json"):
                            response.json()


async def test_alert_lifecycle_publishes_actions_and_is_kept(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    sub = await js.subscribe(nats_config.subjects.actions)
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await seeded(gw, nc, nats_config)
        async with gw.client() as api:
            acked = (await api.post("/api/v1/alerts/a-1/ack", json={"note": "on it"})).json()
            assert acked["acknowledged"] is True
            assert acked["acknowledged_by"] == "bootstrap-admin"
            noted = (await api.post("/api/v1/alerts/a-1/notes", json={"note": "disk full"})).json()
            assert [n["note"] for n in noted["notes"]] == ["disk full"]
            unacked = (await api.post("/api/v1/alerts/a-1/unack")).json()
            assert unacked["acknowledged"] is False
            resolved = (await api.post("/api/v1/alerts/a-1/resolve")).json()
            assert resolved["status"] == "resolved"
            assert resolved["resolved_by"] == "bootstrap-admin"
            published = [
                msgspec.json.decode((await sub.next_msg(timeout=5)).data, type=AlertAction) for _ in range(4)
            ]
            assert [a.action for a in published] == ["ack", "note", "unack", "resolve"]
            assert {a.fingerprint for a in published} == {"fp-a-1"}
            # a delivery result from the notifier shows in the detail and the log
            await js.publish(
                nats_config.subjects.notifications("ops-slack"),
                encode(
                    DeliveryResult(
                        alert_id="a-1", channel="ops-slack", status="sent", attempt=1, time=time.time()
                    )
                ),
            )
            await js.publish(nats_config.subjects.notifications("ops-slack"), b"{}")

            async def delivered() -> None:
                assert gw.counter("ingest_messages_total", kind="notifications") == 1
                assert gw.counter("ingest_messages_total", kind="actions") == 4

            await eventually(delivered)
            detail = (await api.get("/api/v1/alerts/a-1")).json()
            events = [h["event"] for h in detail["history"]]
            assert events == ["firing", "ack", "note", "unack", "resolve"]  # the bus copies added nothing
            assert [d["channel"] for d in detail["deliveries"]] == ["ops-slack"]
            log = (await api.get("/api/v1/notifications", params={"channel": "ops-slack"})).json()
            assert [n["status"] for n in log["notifications"]] == ["sent"]
            assert_error(await api.post("/api/v1/alerts/nope/ack"), 404, "id")
            assert_error(await api.post("/api/v1/alerts/a-1/notes", json={"note": " "}), 400, "note")
            assert_error(await api.post("/api/v1/alerts/a-1/explode"), 404)
            audit = (await api.get("/api/v1/audit")).json()["audit"]
            assert audit[0]["action"] == "POST /api/v1/alerts/{id}/{action}"
            assert audit[0]["actor"].startswith("bootstrap-admin")
            assert audit[0]["source"] == "127.0.0.1"
            assert audit[0]["status"] == 404
            assert {e["details"].get("action") for e in audit} >= {"ack", "note", "unack", "resolve"}


async def test_silences_are_stored_in_the_kv_bucket(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        created = await api.post(
            "/api/v1/silences",
            json={
                "matchers": [
                    {"name": "host", "value": "web-1"},
                    {"name": "rule", "op": "=~", "value": "High.*"},
                    # The older form (before ``op``) is still accepted, as the same operator.
                    {"name": "severity", "value": "low", "equal": False},
                ],
                "duration": "2h",
                "comment": "maintenance",
            },
        )
        assert created.status_code == 201, created.text
        silence = created.json()
        assert silence["state"] == "active"
        assert silence["author"] == "bootstrap-admin"
        assert silence["ends_at"] - silence["starts_at"] == pytest.approx(7200)
        kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
        stored = msgspec.json.decode((await kv.get(silence["id"])).value)
        assert stored["matchers"] == [
            {"name": "host", "value": "web-1"},
            {"name": "rule", "op": "=~", "value": "High.*"},
            {"name": "severity", "op": "!=", "value": "low"},
        ]
        fields = {"id", "matchers", "starts_at", "ends_at", "author", "comment", "created_at", "v"}
        assert set(stored) == fields
        assert stored["created_at"] == pytest.approx(silence["created_at"])
        assert stored["comment"] == "maintenance"
        listed = (await api.get("/api/v1/silences", params={"state": "active"})).json()["silences"]
        assert [s["id"] for s in listed] == [silence["id"]]
        expired = (await api.delete(f"/api/v1/silences/{silence['id']}")).json()
        assert expired["state"] == "expired"
        stored = msgspec.json.decode((await kv.get(silence["id"])).value)
        assert stored["ends_at"] <= time.time()
        assert (await api.get("/api/v1/silences", params={"state": "active"})).json()["silences"] == []

        bad = [
            ({"matchers": []}, "matchers"),
            ({"matchers": [{"name": "host", "value": "x"}]}, "ends_at"),
            (
                {"matchers": [{"name": "host", "value": "x", "regex": "yes"}], "duration": "1h"},
                "matchers[0].regex",
            ),
            (
                {"matchers": [{"name": "host", "value": "(", "regex": True}], "duration": "1h"},
                "matchers[0].value",
            ),
            ({"matchers": [{"name": "host", "value": "x"}], "duration": "soon"}, "duration"),
            ({"matchers": [{"name": "host", "value": "x"}], "ends_at": "-1h"}, "ends_at"),
            ({"matchers": [{"name": "host", "value": "x"}], "ends_at": 5, "duration": "1h"}, "duration"),
            ({"matchers": [{"name": "host", "value": "x"}], "duration": "1h", "color": "red"}, "color"),
            ({"matchers": "host=x", "duration": "1h"}, "matchers"),
        ]
        for body, field in bad:
            assert_error(await api.post("/api/v1/silences", json=body), 400, field)
        assert_error(await api.post("/api/v1/silences", content=b"{not json"), 400, "body")
        assert_error(await api.post("/api/v1/silences"), 400, "body")


async def test_a_silence_regex_re2_cannot_run_is_refused_naming_the_matcher(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        for pattern, reason in [(r"(a)\1", "backreferences are not supported"), ("web(?!-1)", "lookahead")]:
            matchers = [{"name": "host", "value": "web-1"}, {"name": "host", "value": pattern, "regex": True}]
            response = await api.post("/api/v1/silences", json={"matchers": matchers, "duration": "1h"})
            error = assert_error(response, 400, "matchers[1].value")
            assert reason in error["message"] and "RE2 syntax" in error["message"], error
        # The pattern that froze the notifier is accepted: it runs in linear time now.
        evil = {"matchers": [{"name": "host", "value": "(a+)+$", "regex": True}], "duration": "1h"}
        assert (await api.post("/api/v1/silences", json=evil)).status_code == 201


async def test_tokens_can_be_created_listed_and_revoked(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        made = (await api.post("/api/v1/tokens", json={"name": "grafana", "role": "viewer"})).json()
        async with gw.client(made["token"]) as grafana:
            assert (await grafana.get("/api/v1/hosts")).status_code == 200
            listed = (await api.get("/api/v1/tokens")).json()["tokens"]
            assert {t["name"] for t in listed} == {"bootstrap-admin", "grafana"}
            assert all("token" not in t and "hash" not in t for t in listed)
            assert (await api.delete(f"/api/v1/tokens/{made['id']}")).status_code == 200
            assert_error(await grafana.get("/api/v1/hosts"), 401)
        assert_error(await api.post("/api/v1/tokens", json={"name": "x", "role": "root"}), 400, "role")
        assert_error(await api.post("/api/v1/tokens", json={"name": 5, "role": "viewer"}), 400, "name")
        assert_error(await api.post("/api/v1/tokens", json={"name": "   ", "role": "viewer"}), 400, "name")
        assert_error(await api.delete("/api/v1/tokens/abc"), 400, "id")
        assert_error(await api.delete("/api/v1/tokens/99999999999999999999"), 400, "id")
        actions = [e["action"] for e in (await api.get("/api/v1/audit")).json()["audit"]]
        assert actions.count("POST /api/v1/tokens") == 4
        assert "DELETE /api/v1/tokens/{id}" in actions


async def test_limits_cors_and_rate_limits(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(
        nats_config,
        database_url,
        tmp_path,
        max_body_bytes=1000,
        cors_origins=["https://dash.example"],
        rate_limit=1.0,
        rate_burst=5,
    )
    async with running_gateway(config) as gw, gw.client() as api:
        huge = {"host": "web-1", "time": time.time(), "samples": [{"name": "x", "value": 1.0}] * 200}
        assert_error(await api.post("/api/v1/ingest/metrics", json=huge), 413, "body")

        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 500

        assert_error(await api.post("/api/v1/ingest/metrics", content=chunks()), 413, "body")
        preflight = await api.options(
            "/api/v1/hosts",
            headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
        other = await api.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        statuses = [(await api.get("/api/v1/hosts")).status_code for _ in range(7)]
        assert statuses.count(429) >= 1
        limited = await api.get("/api/v1/hosts")
        error = assert_error(limited, 429)
        assert "too many" in error["message"]
        assert int(limited.headers["retry-after"]) >= 1


async def test_bad_input_is_a_4xx_naming_the_field_never_a_500(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        await seeded(gw, nc, nats_config)
        cases = [
            ("GET", "/api/v1/query?metric=cpu&agg=median", None, "agg"),
            ("GET", "/api/v1/query?metric=cpu&step=0s", None, "step"),
            ("GET", "/api/v1/query?metric=cpu&step=1s&from=-30d", None, "step"),
            ("GET", "/api/v1/query?metric=cpu&from=99999999999999", None, "from"),
            ("GET", "/api/v1/query?metric=cpu&from=now&to=-1d", None, "from"),
            ("GET", "/api/v1/alerts?from=-1h&to=-2h", None, "from"),
            ("GET", "/api/v1/alerts?cursor=not-a-cursor", None, "cursor"),
            ("GET", "/api/v1/alerts?limit=ten", None, "limit"),
            ("GET", "/api/v1/hosts?limit=-1", None, "limit"),
            ("GET", "/api/v1/events?to=tomorrow", None, "to"),
            ("GET", "/api/v1/notifications?status=lost", None, "status"),
            ("GET", "/api/v1/export?format=xml", None, "format"),
            ("GET", "/api/v1/export?kind=secrets", None, "kind"),
            ("GET", "/api/v1/series?host=web%00-1", None, "host"),
            ("GET", "/api/v1/hosts/nobody", None, "host"),
            ("POST", "/api/v1/ingest/metrics", {"host": "web-1", "time": "noon", "samples": []}, "time"),
            (
                "POST",
                "/api/v1/ingest/metrics",
                {"host": "web-1", "time": 1.0, "samples": [{"name": "x", "value": "high"}]},
                "samples[0].value",
            ),
            ("POST", "/api/v1/ingest/metrics", {"host": "", "time": 1.0, "samples": []}, "host"),
            (
                "POST",
                "/api/v1/ingest/events",
                {"host": "web-1", "time": 1.0, "events": [{"type": "1bad"}]},
                "events[0].type",
            ),
            ("POST", "/api/v1/alerts/a-1/ack", {"note": 5}, "note"),
            ("POST", "/api/v1/alerts/a-1/ack", {"nope": "x"}, "nope"),
        ]
        for method, path, body, field in cases:
            response = await api.request(method, path, json=body)
            assert 400 <= response.status_code < 500, (path, response.text)
            assert_error(response, response.status_code, field)
        # SQL-looking strings are just strings
        sql = "'; DROP TABLE samples; --"
        for path in ("/api/v1/series", "/api/v1/alerts", "/api/v1/events", "/api/v1/latest"):
            response = await api.get(path, params={"host": sql, "metric": sql, "rule": sql, "type": sql})
            assert response.status_code == 200, (path, response.text)
        assert (await api.get("/api/v1/query", params={"metric": sql, f"label.{sql}": sql})).json()[
            "series"
        ] == []
        assert (await api.get(f"/api/v1/alerts/{sql}")).status_code == 404
        assert (
            await api.get("/api/v1/query", params={"metric": "cpu.usage_percent", "step": "raw"})
        ).status_code == 200


async def test_queries_export_latest_and_http_ingest(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        now = time.time()
        start = now - now % 300 - 600
        for i in range(60):  # ten minutes at 10 s, published over HTTP
            body = {
                "host": "web-1",
                "time": start + i * 10,
                "samples": [{"name": "cpu.usage_percent", "value": float(i)}],
            }
            assert (await api.post("/api/v1/ingest/metrics", json=body)).status_code == 202
        assert (await api.post("/api/v1/ingest/events", json=events_body())).status_code == 202

        async def stored() -> None:
            assert gw.counter("ingest_samples_total") == 60
            assert gw.counter("ingest_events_total") == 1

        await eventually(stored)
        window = {"metric": "cpu.usage_percent", "from": str(start), "to": str(start + 599)}
        by_minute = (await api.get("/api/v1/query", params={**window, "step": "1m", "agg": "max"})).json()
        assert by_minute["source"] == "1m"
        assert [v for _, v in by_minute["series"][0]["points"]] == [float(6 * k + 5) for k in range(10)]
        raw_avg = (await api.get("/api/v1/query", params={**window, "step": "30s", "agg": "avg"})).json()
        assert raw_avg["source"] == "raw"
        assert raw_avg["series"][0]["points"][0][1] == pytest.approx(1.0)
        p50 = (await api.get("/api/v1/query", params={**window, "step": "5m", "agg": "p50"})).json()
        assert [v for _, v in p50["series"][0]["points"]] == [
            pytest.approx(14.5, abs=1),
            pytest.approx(44.5, abs=1),
        ]
        auto = (
            await api.get("/api/v1/query", params={**window, "metric": ["cpu.usage_percent", "x"]})
        ).json()
        assert auto["step"] == 10 and auto["source"] == "raw"
        latest = (await api.get("/api/v1/latest", params={"host": "web-1"})).json()["samples"]
        assert [(s["metric"], s["value"]) for s in latest] == [("cpu.usage_percent", 59.0)]
        host = (await api.get("/api/v1/hosts/web-1")).json()
        assert host["status"] == "up"
        assert host["health"] == 100
        text = (await api.get("/api/v1/export", params={**window, "format": "csv"})).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 60 and rows[0]["host"] == "web-1" and float(rows[-1]["value"]) == 59.0
        exported = (await api.get("/api/v1/export", params={**window, "format": "json"})).json()
        assert len(exported) == 60 and exported[0]["labels"] == {}
        events = (await api.get("/api/v1/export", params={"kind": "events", "format": "json"})).json()
        assert [e["type"] for e in events] == ["deploy"]
        page = (await api.get("/api/v1/series", params={"limit": 1})).json()
        assert page["next_cursor"] is None and len(page["series"]) == 1
        document = (await httpx.AsyncClient(base_url=gw.url).get("/api/v1/openapi.json")).json()
        assert "/api/v1/alerts/{id}/ack" in document["paths"]
        assert "MetricBatch" in document["components"]["schemas"]


async def test_metric_names_event_counts_and_a_labelled_export_feed_the_explorer_and_events_pages(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        now = time.time()
        start = now - now % 120 - 600  # a whole 2-minute bucket: the counts below assume it
        samples = [
            {"name": "app.orders", "value": 3.0, "labels": {"shop": "eu"}},
            {"name": "app.orders", "value": 5.0, "labels": {"shop": "us"}},
            {"name": "cpu.usage_percent", "value": 7.0},
        ]
        for host in ("web-1", "web-2"):
            body = {"host": host, "time": start, "samples": samples}
            assert (await api.post("/api/v1/ingest/metrics", json=body)).status_code == 202
        for i, kind in enumerate(["login", "login", "deploy", "login"]):
            body = {
                "host": "web-1" if i < 3 else "web-2",
                "time": start + 60 * i,
                "events": [{"type": kind, "message": f"#{i}"}],
            }
            assert (await api.post("/api/v1/ingest/events", json=body)).status_code == 202

        async def stored() -> None:
            assert gw.counter("ingest_samples_total") == 6
            assert gw.counter("ingest_events_total") == 4

        await eventually(stored)
        names = (await api.get("/api/v1/metric-names")).json()["metrics"]
        assert names == [
            {"name": "app.orders", "series": 4, "hosts": 2, "unit": "", "label_names": ["shop"]},
            {"name": "cpu.usage_percent", "series": 2, "hosts": 2, "unit": "percent", "label_names": []},
        ]
        found = (await api.get("/api/v1/metric-names", params={"host": "web-2", "q": "app."})).json()
        assert [(m["name"], m["series"]) for m in found["metrics"]] == [("app.orders", 2)]

        window = {"from": str(start), "to": str(start + 600)}
        counts = (await api.get("/api/v1/events/counts", params={**window, "step": "2m"})).json()
        assert counts["step"] == 120
        by_type = {t["type"]: (t["total"], t["points"]) for t in counts["types"]}
        assert by_type == {
            "deploy": (1, [[start + 120 - (start + 120) % 120, 1]]),
            "login": (3, [[start - start % 120, 2], [start + 180 - (start + 180) % 120, 1]]),
        }
        one_host = (await api.get("/api/v1/events/counts", params={**window, "host": "web-2"})).json()
        assert [(t["type"], t["total"]) for t in one_host["types"]] == [("login", 1)]
        refused = await api.get("/api/v1/events/counts", params={"step": "raw"})
        assert_error(refused, 400, "step")

        labelled = {**window, "kind": "samples", "format": "json", "metric": "app.orders", "label.shop": "us"}
        exported = (await api.get("/api/v1/export", params=labelled)).json()
        assert sorted((r["host"], r["labels"]["shop"], r["value"]) for r in exported) == [
            ("web-1", "us", 5.0),
            ("web-2", "us", 5.0),
        ]


async def test_lists_page_with_a_cursor(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        js = nc.jetstream()
        for i in range(7):
            await js.publish(nats_config.subjects.alerts("web-1"), encode(alert(f"a-{i}")))

        async def stored() -> None:
            assert gw.counter("ingest_messages_total", kind="alerts") == 7

        await eventually(stored)
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/api/v1/alerts", params=params)).json()
            seen += [a["id"] for a in page["alerts"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == [f"a-{i}" for i in range(7)]
        assert len(seen) == 7
