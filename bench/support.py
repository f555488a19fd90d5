"""What several benchmarks share: latency percentiles and a minimal HTTP/1.1 server loop."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 (nearest rank) and the mean of ``values``."""
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "mean": statistics.fmean(ordered)}


#: Called per request with (method, path, body, perf_counter when its head was read); returns
#: the body of the 200 answer.
Handler = Callable[[bytes, bytes, bytes, float], bytes]


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler) -> None:
    """Answer the keep-alive HTTP/1.1 requests of one connection (bodies by ``Content-Length``)
    until the client closes it or the benchmark is over."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            arrived = time.perf_counter()
            lines = head.split(b"\r\n")
            method, path = lines[0].split(b" ")[:2]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            reply = handle(method, path, body, arrived)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                + reply
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ValueError):
        pass  # the client closed the connection, or the benchmark is over
    finally:
        writer.close()
