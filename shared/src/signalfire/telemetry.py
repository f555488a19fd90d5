"""Each service's own counters and gauges, exposed in the Prometheus text format.

A :class:`Registry` belongs to one service instance (no global); the gateway serves it at
``/metrics``, the other services through :func:`serve_metrics` on ``metrics_listen``::

    registry = Registry("signalfire_evaluator")
    events = registry.counter("alert_events_total", "Alert events published", ["status"])
    events.inc(status="firing")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable

log = logging.getLogger("signalfire.telemetry")

LabelKey = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._values: dict[LabelKey, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def _key(self, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[tuple[LabelKey, float]]:
        return sorted(self._values.items())

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key, value in self.samples():
            if key:
                labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(self.labelnames, key, strict=True))
                lines.append(f"{self.name}{{{labels}}} {_number(value)}")
            else:
                lines.append(f"{self.name} {_number(value)}")
        return lines


class Counter(_Metric):
    """A value that only goes up (restarts from zero when the process restarts)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter cannot decrease")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value that goes up and down; may be computed at scrape time by ``function``."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Iterable[str] = (),
        function: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.function = function

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def samples(self) -> Iterable[tuple[LabelKey, float]]:
        if self.function is not None:
            return [((), float(self.function()))]
        return super().samples()


class Registry:
    """The counters and gauges of one service instance, all names under ``namespace``."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Counter:
        metric = Counter(f"{self.namespace}_{name}", help_text, labelnames)
        self._add(metric)
        return metric

    def gauge(
        self,
        name: str,
        help_text: str,
        labelnames: Iterable[str] = (),
        function: Callable[[], float] | None = None,
    ) -> Gauge:
        metric = Gauge(f"{self.namespace}_{name}", help_text, labelnames, function)
        self._add(metric)
        return metric

    def render(self) -> str:
        """The whole registry in the Prometheus text exposition format (0.0.4)."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def serve_metrics(registry: Registry, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP server answering ``GET /metrics`` (and ``/healthz``) for ``registry``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = request.split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 1 else ""
            if parts[0] == b"GET" and path.split("?")[0] == "/metrics":
                status, body, ctype = "200 OK", registry.render().encode(), CONTENT_TYPE
            elif parts[0] == b"GET" and path == "/healthz":
                status, body, ctype = "200 OK", b'{"status":"ok"}', "application/json"
            else:
                status, body, ctype = "404 Not Found", b'{"error":{"code":"not_found"}}', "application/json"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    log.info("serving /metrics", extra={"address": f"{host}:{port}"})
    return server


def parse_listen(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9101"`` → ``("127.0.0.1", 9101)``; ``"[::1]:9101"`` works too."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)
