"""Each service's own metrics, on ``prometheus_client``, in a registry of the service's own.

A :class:`Registry` belongs to one service instance, never the library's global default
(tests run several services in one process), and puts every name under the service's
namespace. The gateway serves it at ``/metrics``, the other services through
:func:`serve_metrics` on ``metrics_listen``::

    registry = Registry("signalfire_evaluator")
    events = registry.counter("alert_events", "Alert events published", ["status"])
    events.labels(status="firing").inc()  # signalfire_evaluator_alert_events_total{status="firing"}

Counters are declared without ``_total``: ``prometheus_client`` appends it to the sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

# The metric types are the library's own; services import them from here, the package that
# depends on prometheus_client.
__all__ = ["Counter", "Gauge", "Histogram", "Registry", "exposition", "parse_listen", "serve_metrics"]

log = logging.getLogger("signalfire.telemetry")


class Registry(CollectorRegistry):
    """The metrics of one service instance, every name under ``namespace``.

    A ``CollectorRegistry`` (so ``generate_latest`` and ``get_sample_value`` take it) with
    factories that register each metric here and not in the library's global registry.
    """

    def __init__(self, namespace: str) -> None:
        super().__init__()
        # A counter's `_created` series is process-wide in prometheus_client; Signalfire's
        # pages never had them, and the OpenMetrics page does not need them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        self.namespace = namespace
        self._included: list[Callable[[], Iterable[Metric]]] = []

    def include(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Serve the metric families ``source`` returns at each scrape with this registry's own
        (another process's, e.g. the gateway's ingest workers'). A family of a name this
        registry has too is merged into it, so the page holds every name once; ``source``'s
        samples should carry a label that tells them apart."""
        self._included.append(source)

    def collect(self) -> Iterator[Metric]:
        if not self._included:
            yield from super().collect()
            return
        families: dict[str, Metric] = {}
        for family in super().collect():
            families[family.name] = family
        for source in self._included:
            for family in source():
                mine = families.get(family.name)
                if mine is None:
                    families[family.name] = family
                elif mine.type == family.type:
                    # (each collect() builds new Metric objects: extending one changes nothing kept)
                    mine.samples.extend(family.samples)
        yield from families.values()

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """A counter sampled as ``<namespace>_<name>_total`` (``name`` without ``_total``)."""
        if name.endswith("_total"):
            raise ValueError(f"declare counter {name!r} without _total: prometheus_client appends it")
        return Counter(name, documentation, labelnames, namespace=self.namespace, registry=self)

    def gauge(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        function: Callable[[], float] | None = None,
    ) -> Gauge:
        """A gauge; with ``function`` (no labels), its value is computed at each scrape."""
        gauge = Gauge(name, documentation, labelnames, namespace=self.namespace, registry=self)
        if function is not None:
            gauge.set_function(function)
        return gauge

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> Histogram:
        """A histogram (``_bucket``, ``_sum``, ``_count``) with the upper bounds ``buckets``."""
        return Histogram(
            name, documentation, labelnames, namespace=self.namespace, registry=self, buckets=buckets
        )


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """``registry``'s page and its content type for a request's ``Accept`` header:
    OpenMetrics when the scraper asks for it (Prometheus does), else the text format 0.0.4."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> asyncio.Server:
    """An HTTP server on the service's own event loop (prometheus_client's runs a thread)
    answering ``GET /metrics`` for ``registry`` and ``GET /healthz``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            head, *header_lines = request.decode("latin-1").split("\r\n")
            parts = head.split(" ", 2)
            method, path = (parts[0], parts[1]) if len(parts) > 1 else ("", "")
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, sep, value in (line.partition(":") for line in header_lines)
                if sep
            )
            if method == "GET" and path.split("?")[0] == "/metrics":
                status = "200 OK"
                body, ctype = exposition(registry, headers.get("accept"))
            elif method == "GET" and path == "/healthz":
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
