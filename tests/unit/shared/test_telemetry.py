from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from signalfire.telemetry import Registry, parse_listen, serve_metrics
from tests.support.metrics import buckets, families, openmetrics_families, samples, total, value


def test_renders_counters_gauges_and_histograms_in_the_prometheus_text_format() -> None:
    registry = Registry("signalfire_test")
    received = registry.counter("messages", "Messages received", ["kind"])
    registry.gauge("queue_depth", "Messages waiting", function=lambda: 3)
    latency = registry.histogram("latency_seconds", "Time taken", ["kind"], buckets=(0.01, 0.1, 1.0))
    received.labels(kind="metrics").inc()
    received.labels(kind='we"ird').inc(2)
    for seconds in (0.005, 0.05, 0.05, 5.0):
        latency.labels(kind="metrics").observe(seconds)

    text = generate_latest(registry).decode()
    assert "# TYPE signalfire_test_messages_total counter" in text
    assert 'signalfire_test_messages_total{kind="we\\"ird"} 2.0' in text
    assert "_created" not in text  # the pages never had these series
    found = samples(text)
    assert total(found, "signalfire_test_messages_total", kind="metrics") == 1
    assert total(found, "signalfire_test_messages_total", kind='we"ird') == 2
    assert total(found, "signalfire_test_queue_depth") == 3
    page = families(text)
    assert page["signalfire_test_latency_seconds"].type == "histogram"
    assert buckets(page["signalfire_test_latency_seconds"], kind="metrics") == [
        (0.01, 1.0),
        (0.1, 3.0),
        (1.0, 3.0),
        (float("inf"), 4.0),
    ]
    assert total(found, "signalfire_test_latency_seconds_sum", kind="metrics") == pytest.approx(5.105)


def test_a_gauge_function_is_read_at_each_scrape() -> None:
    registry = Registry("signalfire_test")
    waiting = [1, 2]
    registry.gauge("waiting", "Items waiting", function=lambda: len(waiting))
    assert value(registry, "signalfire_test_waiting") == 2
    waiting.append(3)
    assert value(registry, "signalfire_test_waiting") == 3


def test_each_registry_counts_for_its_own_service_instance() -> None:
    first, second = Registry("signalfire_test"), Registry("signalfire_test")
    first.counter("runs", "Runs").inc()
    second.counter("runs", "Runs")  # the same name in another instance is no clash
    assert value(first, "signalfire_test_runs_total") == 1
    assert value(second, "signalfire_test_runs_total") == 0


def test_misuse_is_refused() -> None:
    registry = Registry("x")
    counter = registry.counter("c", "c", ["a"])
    with pytest.raises(ValueError):
        counter.labels(b="1")
    with pytest.raises(ValueError):
        counter.labels(a="1").inc(-1)
    with pytest.raises(ValueError):
        registry.counter("c", "again")
    with pytest.raises(ValueError, match="without _total"):
        registry.counter("d_total", "prometheus_client appends it")


def test_reading_a_name_no_metric_has_fails() -> None:
    registry = Registry("signalfire_test")
    registry.counter("runs", "Runs", ["kind"])
    assert value(registry, "signalfire_test_runs_total", kind="never") == 0
    with pytest.raises(KeyError):
        value(registry, "signalfire_test_run_total")


async def _get(port: int, path: str, accept: str | None = None) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = f"Accept: {accept}\r\n" if accept else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return head, body


async def test_serves_metrics_over_http() -> None:
    registry = Registry("signalfire_test")
    registry.counter("up", "x").inc()
    registry.histogram("wait_seconds", "x", buckets=(1.0,)).observe(0.5)
    server = await serve_metrics(registry, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        head, body = await _get(port, "/metrics")
        assert head.startswith("HTTP/1.1 200 OK")
        assert "Content-Type: text/plain; version=0.0.4" in head
        assert total(samples(body), "signalfire_test_up_total") == 1
        assert buckets(families(body)["signalfire_test_wait_seconds"]) == [(1.0, 1.0), (float("inf"), 1.0)]

        head, body = await _get(port, "/metrics", "application/openmetrics-text; version=1.0.0")
        assert "Content-Type: application/openmetrics-text" in head
        assert {name: f.type for name, f in openmetrics_families(body).items()} == {
            "signalfire_test_up": "counter",
            "signalfire_test_wait_seconds": "histogram",
        }

        head, body = await _get(port, "/healthz")
        assert head.startswith("HTTP/1.1 200 OK") and body == '{"status":"ok"}'
        head, _ = await _get(port, "/elsewhere")
        assert head.startswith("HTTP/1.1 404")
    finally:
        server.close()
        await server.wait_closed()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_listen("nope")
