from __future__ import annotations

import asyncio

import pytest

from signalfire.telemetry import Registry, parse_listen, serve_metrics


def test_renders_prometheus_text() -> None:
    registry = Registry("signalfire_test")
    received = registry.counter("messages_total", "Messages received", ["kind"])
    registry.gauge("queue_depth", "Messages waiting", function=lambda: 3)
    received.inc(kind="metrics")
    received.inc(2, kind='we"ird')
    text = registry.render()
    assert "# TYPE signalfire_test_messages_total counter" in text
    assert 'signalfire_test_messages_total{kind="metrics"} 1' in text
    assert 'signalfire_test_messages_total{kind="we\\"ird"} 2' in text
    assert "signalfire_test_queue_depth 3" in text


def test_misuse_is_refused() -> None:
    registry = Registry("x")
    counter = registry.counter("c", "c", ["a"])
    with pytest.raises(ValueError):
        counter.inc(b="1")
    with pytest.raises(ValueError):
        counter.inc(-1, a="1")
    with pytest.raises(ValueError):
        registry.counter("c", "again")


async def test_serves_metrics_over_http() -> None:
    registry = Registry("signalfire_test")
    registry.counter("up_total", "x").inc()
    server = await serve_metrics(registry, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = (await reader.read()).decode()
        writer.close()
        assert response.startswith("HTTP/1.1 200 OK")
        assert "signalfire_test_up_total 1" in response
    finally:
        server.close()
        await server.wait_closed()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_listen("nope")
