"""Values near the float maximum. Two samples of 1.7e308 in one minute made the gateway's rollup
merge raise (``math.fsum`` overflows) at every flush, for every host's rows in it; in two
minutes of an hour they would have failed the hourly fold (PostgreSQL refuses a ``sum`` that
overflows). The contract now refuses a value past 1e300, so every sum stays finite."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg

from signalfire.bus import NatsConfig
from tests.integration.gateway_support import eventually, gateway_config, running_gateway


def batch(host: str, when: float, value: str) -> bytes:
    return f'{{"host":"{host}","time":{when},"samples":[{{"name":"x","value":{value}}}]}}'.encode()


async def test_a_value_whose_sums_would_overflow_is_refused_and_every_other_hosts_rollups_merge(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    minute = time.time() // 60 * 60 - 120  # two minutes ago: ended, merged at the next flush
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        for host, when, value in (
            ("huge", minute + 1, "1.7976931348623157e308"),
            ("huge", minute + 2, "-1e301"),
            ("big", minute + 1, "1e300"),
            ("big", minute + 2, "1e300"),  # the largest accepted: their sum, 2e300, is finite
            ("web", minute + 1, "42.5"),
        ):
            await js.publish(nats_config.subjects.metrics(host), batch(host, when, value))

        async def merged() -> dict[str, tuple[int, float]]:
            assert gw.counter("ingest_rejected_total", reason="invalid_payload") == 2
            conn = await asyncpg.connect(database_url)
            try:
                rows = await conn.fetch(
                    "SELECT s.host, r.count, r.sum FROM samples_1m r JOIN series s ON s.id = r.series_id"
                )
            finally:
                await conn.close()
            found = {row["host"]: (row["count"], row["sum"]) for row in rows}
            assert set(found) == {"big", "web"}
            return found

        assert await eventually(merged) == {"big": (2, 2e300), "web": (1, 42.5)}
        async with gw.client() as client:
            answer = await client.get(
                "/api/v1/query",
                params={"metric": "x", "from": str(minute - 60), "to": str(minute + 60), "step": "1m"},
            )
        assert answer.status_code == 200, answer.text
        points = {s["host"]: s["points"] for s in answer.json()["series"]}
        assert points == {"big": [[minute, 1e300]], "web": [[minute, 42.5]]}
