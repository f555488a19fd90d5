"""One writer per fact: the API publishes an alert action and the gateway-actions consumer
stores it; the API writes a silence only into the KV bucket and the gateway's mirror copies the
bucket into PostgreSQL. Real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from devstack import NatsServer

from signalfire.bus import NatsConfig, connect
from signalfire.config import Duration
from signalfire.events import AlertAction, Silence, encode
from signalfire.gateway.ingest import ACTIONS_CONSUMER
from signalfire.matchers import Matcher
from tests.integration.gateway_support import RunningGateway, eventually, gateway_config, running_gateway
from tests.integration.test_gateway_endpoints import alert, seeded
from tests.support.private_nats import private_nats
from tests.support.redelivery import die_holding_it


async def history(gw: RunningGateway, alert_id: str = "a-1") -> list[str]:
    async with gw.client() as api:
        response = await api.get(f"/api/v1/alerts/{alert_id}")
    assert response.status_code == 200, response.text
    return [h["event"] for h in response.json()["history"]]


async def listed(gw: RunningGateway, **params: str) -> dict[str, dict[str, Any]]:
    async with gw.client() as api:
        response = await api.get("/api/v1/silences", params=params)
    assert response.status_code == 200, response.text
    return {s["id"]: s for s in response.json()["silences"]}


def kv_silence(silence_id: str, ends_in: float = 3600.0, **fields: Any) -> Silence:
    now = time.time()
    return Silence(
        id=silence_id,
        matchers=[Matcher(name="host", value="db-1")],
        starts_at=now,
        ends_at=now + ends_in,
        author="nats-cli",
        **fields,
    )


async def test_an_action_through_the_api_is_answered_with_the_alert_and_stored_once(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    sub = await js.subscribe(nats_config.subjects.actions)
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await seeded(gw, nc, nats_config)
        async with gw.client() as api:
            response = await api.post("/api/v1/alerts/a-1/ack", json={"note": "on it"})
        assert response.status_code == 200, response.text
        assert response.json()["acknowledged_by"] == "bootstrap-admin"  # the consumer stored it first
        published = await sub.next_msg(timeout=5)
        action = msgspec.json.decode(published.data, type=AlertAction)
        assert action.id and published.headers == {"Nats-Msg-Id": action.id}

        # The same message published again with its id: the stream keeps one.
        ack = await js.publish(
            nats_config.subjects.actions, published.data, headers={"Nats-Msg-Id": action.id}
        )
        assert ack.duplicate
        # Delivered again all the same (another message, the same action): stored once.
        await js.publish(nats_config.subjects.actions, published.data)

        async def delivered_twice() -> None:
            assert gw.counter("ingest_messages_total", kind="actions") == 2

        await eventually(delivered_twice)
        assert await history(gw) == ["firing", "ack"]


async def test_an_action_published_while_the_gateway_is_down_is_stored_when_it_comes_back(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(
        nats_config, database_url, tmp_path, ack_wait=Duration(1), apply_wait=Duration(0.5)
    )
    async with running_gateway(config) as gw:
        await seeded(gw, nc, nats_config)
        assert gw.service.ingest is not None
        await gw.service.ingest.stop()  # the consumer stops; the API still publishes
        async with gw.client() as api:
            response = await api.post("/api/v1/alerts/a-1/notes", json={"note": "disk full"})
            assert response.status_code == 202, response.text
            pending = response.json()
            assert pending["action"]["action"] == "note" and pending["action"]["note"] == "disk full"
            assert "applying" in pending["message"]
            assert (await api.get("/api/v1/alerts/a-1")).json()["notes"] == []
    # A replica that dies holding the action: it is redelivered to the next gateway.
    await die_holding_it(nc.jetstream(), nats_config.subjects.alerts_stream, ACTIONS_CONSUMER, 1, 1.0)
    async with running_gateway(config) as gw:

        async def stored() -> None:
            assert await history(gw) == ["firing", "note"]

        await eventually(stored)
        async with gw.client() as api:
            notes = (await api.get("/api/v1/alerts/a-1")).json()["notes"]
        assert [(n["note"], n["author"]) for n in notes] == [("disk full", "bootstrap-admin")]


async def test_a_silence_put_straight_into_the_bucket_is_listed_and_a_bad_entry_is_counted(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        put_at = time.time()
        await kv.put("by-hand", encode(kv_silence("by-hand")))
        await kv.put("garbled", b"{not a silence")
        await kv.put("other-id", encode(kv_silence("not-its-key")))

        async def mirrored() -> dict[str, Any]:
            found = await listed(gw, state="active")
            assert "by-hand" in found
            assert gw.counter("bad_state_entries_total", bucket="silences") == 2
            return found["by-hand"]

        silence = await eventually(mirrored)
        assert silence["author"] == "nats-cli"
        assert silence["matchers"] == [{"name": "host", "value": "db-1"}]
        assert silence["created_at"] == pytest.approx(put_at, abs=2)  # when it was put: it had none
        assert set(await listed(gw)) == {"by-hand"}

        # Deleted from the bucket: the notifier no longer mutes with it, and the list says so.
        await kv.delete("by-hand")

        async def ended() -> None:
            assert set(await listed(gw, state="expired")) == {"by-hand"}

        await eventually(ended)


async def test_a_silence_expired_through_the_api_is_expired_in_the_bucket_and_the_table(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        body = {"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h", "comment": "deploy"}
        created = (await api.post("/api/v1/silences", json=body)).json()
        # No wait: the answer came after the table had it.
        assert set(await listed(gw, state="active")) == {created["id"]}
        response = await api.delete(f"/api/v1/silences/{created['id']}")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "expired"
        stored = msgspec.json.decode((await kv.get(created["id"])).value, type=Silence)
        assert stored.ends_at <= time.time()
        assert stored.created_at == pytest.approx(created["created_at"])
        assert set(await listed(gw, state="expired")) == {created["id"]}
        assert await listed(gw, state="active") == {}
        row = await asyncpg_row(database_url, created["id"])
        assert row["ends_at"] == pytest.approx(stored.ends_at)
        assert row["expired_at"] is not None
        # Expiring it again changes nothing; an unknown one is a 404.
        again = await api.delete(f"/api/v1/silences/{created['id']}")
        assert again.status_code == 200 and again.json()["ends_at"] == pytest.approx(stored.ends_at)
        assert (await api.delete("/api/v1/silences/nope")).status_code == 404


async def test_a_silence_created_while_the_silence_watch_is_behind_is_listed_at_once(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """After a NATS node's death the mirror's watch is seconds behind while its consumer is
    made again, in the middle of an incident, when silences are made: the create waited for
    the mirror (``apply_wait``, 5 s) and the list did not show the silence until the watch
    came back. The API copies what it wrote into the table itself."""
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    config = gateway_config(nats_config, database_url, tmp_path, apply_wait=Duration(5))
    async with running_gateway(config) as gw, gw.client() as api:
        assert gw.service.silences is not None
        await gw.service.silences.stop()  # the watch hears nothing from now on
        body = {"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h", "comment": "incident"}
        started = time.monotonic()
        response = await api.post("/api/v1/silences", json=body)
        took = time.monotonic() - started
        assert response.status_code == 201, response.text
        created = response.json()
        assert took < 2.5, f"the create waited {took:.1f} s for a watch that is behind"
        active = await listed(gw, state="active")
        assert set(active) == {created["id"]}
        assert active[created["id"]]["comment"] == "incident"
        assert active[created["id"]]["author"] == "bootstrap-admin"

        response = await api.delete(f"/api/v1/silences/{created['id']}")
        assert response.status_code == 200, response.text
        assert set(await listed(gw, state="expired")) == {created["id"]}
        stored = msgspec.json.decode((await kv.get(created["id"])).value, type=Silence)

        # A newer write by someone else is the watch's to copy: it replaces the API's copy,
        # and the watch's copy of what the API wrote changes nothing.
        stored.comment = "edited by hand"
        await kv.put(created["id"], encode(stored))
        await gw.service.silences.start()

        async def newer() -> None:
            assert (await listed(gw))[created["id"]]["comment"] == "edited by hand"

        await eventually(newer)
        row = (await listed(gw))[created["id"]]
        assert row["created_at"] == pytest.approx(created["created_at"])
        assert row["state"] == "expired"


async def test_a_silence_the_table_refuses_is_answered_as_the_bucket_holds_it(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    config = gateway_config(nats_config, database_url, tmp_path, apply_wait=Duration(0.5))
    async with running_gateway(config) as gw, gw.client() as api:
        conn = await asyncpg.connect(database_url)
        try:  # a table that refuses this one silence, as a database might refuse a write
            await conn.execute("ALTER TABLE silences ADD CONSTRAINT no_refused CHECK (comment <> 'refused')")
        finally:
            await conn.close()
        body = {"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h", "comment": "refused"}
        response = await api.post("/api/v1/silences", json=body)
        assert response.status_code == 201, response.text  # stored where it mutes: the bucket
        created = response.json()
        assert created["comment"] == "refused" and created["state"] == "active"
        assert (await kv.get(created["id"])).value
        [refused] = [
            r for r in caplog.records if r.getMessage() == "silence not copied into the table by the API"
        ]
        assert "no_refused" in refused.reason  # type: ignore[attr-defined]

        async def counted() -> None:  # the mirror could not copy it either, and says so
            assert gw.counter("bad_state_entries_total", bucket="silences") == 1

        await eventually(counted)
        assert await listed(gw) == {}


async def asyncpg_row(database_url: str, silence_id: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(
            "SELECT extract(epoch FROM ends_at)::float8 AS ends_at, expired_at FROM silences WHERE id = $1",
            silence_id,
        )
    finally:
        await conn.close()


async def test_a_restarted_gateway_rebuilds_the_silences_table_from_the_bucket(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    config = gateway_config(nats_config, database_url, tmp_path)
    async with running_gateway(config) as gw, gw.client() as api:
        body = {"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h"}
        first = (await api.post("/api/v1/silences", json=body)).json()
        second = (await api.post("/api/v1/silences", json=body)).json()
    # While no gateway runs: the table is lost, and the bucket changes.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM silences")
    finally:
        await conn.close()
    await kv.put("while-down", encode(kv_silence("while-down")))
    expired = msgspec.json.decode((await kv.get(second["id"])).value, type=Silence)
    expired.ends_at = time.time()
    await kv.put(second["id"], encode(expired))
    async with running_gateway(config) as gw:
        # At once: the gateway copies the bucket before it serves.
        assert set(await listed(gw, state="active")) == {first["id"], "while-down"}
        assert set(await listed(gw, state="expired")) == {second["id"]}
        rebuilt = (await listed(gw))[first["id"]]
        assert rebuilt["created_at"] == pytest.approx(first["created_at"])
        assert rebuilt["author"] == "bootstrap-admin"


async def test_without_nats_actions_and_silences_are_answered_503_naming_nats(
    tmp_path: Path, database_url: str
) -> None:
    server, nats = await private_nats(tmp_path / "nats", f"t{uuid.uuid4().hex[:6]}")
    try:
        admin = await connect(nats, "test-admin")
        try:
            # NATS stays away longer than an action is published again (publish_wait)
            config = gateway_config(nats, database_url, tmp_path, publish_wait=Duration(0.5))
            async with running_gateway(config) as gw, gw.client() as api:
                await seeded(gw, admin, nats)
                body = {"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h"}
                silence = (await api.post("/api/v1/silences", json=body)).json()
                await asyncio.to_thread(server.stop)

                async def refused() -> None:
                    for response in (
                        await api.post("/api/v1/alerts/a-1/ack"),
                        await api.post("/api/v1/silences", json=body),
                        await api.delete(f"/api/v1/silences/{silence['id']}"),
                    ):
                        assert response.status_code == 503, response.text
                        assert "NATS" in response.json()["error"]["message"]

                await eventually(refused)
                server = await asyncio.to_thread(NatsServer(tmp_path / "nats", port=server.port).start)

                async def served_again() -> None:
                    response = await api.post("/api/v1/alerts/a-1/ack")
                    assert response.status_code == 200, response.text

                await eventually(served_again, timeout=30)
                assert await history(gw) == ["firing", "ack"]  # the refused ones left nothing
        finally:
            await admin.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_an_action_on_an_alert_published_by_another_gateway_is_waited_for(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """Two gateways share the consumer: whichever stores the action, the one asked answers."""
    config = gateway_config(nats_config, database_url, tmp_path)
    async with running_gateway(config) as first, running_gateway(config) as second:
        await nc.jetstream().publish(nats_config.subjects.alerts("web-1"), encode(alert()))

        async def seeded_by_either() -> None:
            assert await history(first) == ["firing"]

        await eventually(seeded_by_either)
        for gw in (first, second, first, second):
            async with gw.client() as api:
                response = await api.post("/api/v1/alerts/a-1/notes", json={"note": f"via {gw.url}"})
            assert response.status_code == 200, response.text
            assert response.json()["notes"][-1]["note"] == f"via {gw.url}"
        assert await history(first) == ["firing", "note", "note", "note", "note"]
