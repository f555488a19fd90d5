"""TCP check: does the port accept a connection, and how fast."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from signalfire.collector.checks.base import Result, TcpCheckConfig, outcome, outcome_specs
from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample


class TcpCheck:
    kind: ClassVar[str] = "tcp"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = outcome_specs("tcp", "TCP connect")

    def __init__(self, config: TcpCheckConfig, default_interval: float) -> None:
        self.target = config.name or config.address
        self.host, _, port = config.address.rpartition(":")
        self.host = self.host.strip("[]")  # [::1]:22
        self.port = int(port)
        self.interval = float(config.interval or default_interval)
        self.timeout = float(config.timeout)

    async def close(self) -> None:
        """Nothing is kept between runs."""

    def failed(self, result: Result) -> list[Sample]:
        return outcome("tcp", self.target, result)

    async def run(self) -> list[Sample]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            return self.failed("timeout")
        except OSError:
            return self.failed("connection_failed")
        latency = (time.perf_counter() - started) * 1000
        writer.close()
        return outcome("tcp", self.target, "ok", latency)
