"""One ingest worker process: the gateway's ingest alone, started by :mod:`.workers`.

Run as ``python -m signalfire.gateway.worker --index N`` by the gateway (never by hand). The
gateway writes its configuration as one JSON line on the worker's stdin and keeps stdin open:
when it closes (the gateway exited, even by ``kill -9``) the worker stops as on SIGTERM,
finishing the round in flight. The worker runs :class:`~signalfire.gateway.ingest.Ingest` on
the shared durable consumers, publishes committed frames (:mod:`.committed`) for the API
processes, and writes its metrics page to stdout every ``REPORT_EVERY`` seconds (a decimal
length line, then the Prometheus text page) for the gateway's ``/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from prometheus_client.exposition import generate_latest

from signalfire.bus import connect
from signalfire.config import ConfigError, convert
from signalfire.gateway.committed import CommittedPublisher, new_origin
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.ingest import Ingest
from signalfire.gateway.rollup import Rollups
from signalfire.gateway.store import Store, open_pool
from signalfire.log import configure_logging
from signalfire.runner import Essentials, run_service, serve
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.gateway.worker")

#: Seconds between two metrics pages sent to the gateway.
REPORT_EVERY = 1.0


class IngestWorker:
    """The ingest of one worker process, with its own database pool and NATS connection."""

    def __init__(self, config: GatewayConfig, index: int) -> None:
        self.config = config
        self.index = index
        self.registry = Registry("signalfire_gateway")
        self.pool: asyncpg.Pool | None = None
        self.nc: NATS | None = None
        self.ingest: Ingest | None = None
        self._reporter: asyncio.Task[None] | None = None
        #: The loops it cannot run without; one that ends stops the process (signalfire.runner),
        #: and the gateway starts it again.
        self.essentials = Essentials()

    async def start(self) -> None:
        config = self.config
        # The writers' transactions, the rollup merge and the action hosts' lookup at once.
        self.pool = await open_pool(config.database_url, config.ingest_writers + 3)
        self.nc = await connect(config.nats, f"signalfire-gateway-ingest-{self.index}")
        rollups = Rollups(
            self.pool,
            retention=config.retention,
            repair_after=float(config.rollup_repair_after),
            registry=self.registry,
        )
        self.ingest = Ingest(
            config,
            self.nc.jetstream(),
            Store(self.pool),
            self.registry,
            None,
            rollups=rollups,
            committed=CommittedPublisher(self.nc, config.nats.subjects, new_origin(), self.registry),
            # each worker stores one share of the hosts, so each series' rollups are merged once
            share=(self.index, max(1, config.ingest_workers)),
        )
        await self.ingest.start()
        self.essentials.watch(*self.ingest.tasks)
        self._report()
        self._reporter = self.essentials.spawn(self._report_every(), "worker-report")
        log.info("ingest worker started", extra={"worker": self.index})

    async def stop(self) -> None:
        self.essentials.stop()
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
            self._reporter = None
        if self.ingest is not None:
            await self.ingest.stop()
            self.ingest = None
            self._report()  # what the last rounds stored
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=10)
            self.pool = None

    async def _report_every(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            self._report()

    def _report(self) -> None:
        page = generate_latest(self.registry)
        try:
            sys.stdout.buffer.write(b"%d\n" % len(page) + page)
            sys.stdout.buffer.flush()
        except (BrokenPipeError, ValueError):  # the gateway is gone; stdin's EOF stops us
            pass


def _stop_when_stdin_closes() -> None:
    """SIGTERM to this process once stdin reaches its end (the gateway exited)."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    fd = sys.stdin.fileno()
    # A daemon thread: a blocked read must not keep the process alive at exit (and a raw read:
    # the buffered reader's lock would be held at interpreter shutdown).
    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m signalfire.gateway.worker")
    parser.add_argument("--index", type=int, required=True, help="the worker's number (1, 2, …)")
    args = parser.parse_args(argv)
    line = sys.stdin.buffer.readline()
    try:
        config = convert(msgspec.json.decode(line), GatewayConfig)
    except (msgspec.DecodeError, ValueError, ConfigError) as exc:
        print(f"signalfire gateway worker: no configuration on stdin: {exc}", file=sys.stderr)
        return 2
    # (its lines go to the gateway's stderr: the service name tells them apart)
    configure_logging(f"gateway-ingest-{args.index}", config.log_level, config.log_format)
    _stop_when_stdin_closes()

    async def run() -> None:
        await serve(IngestWorker(config, args.index))

    started = time.monotonic()
    code = run_service(run)
    uptime = round(time.monotonic() - started, 1)
    log.info("ingest worker stopped", extra={"worker": args.index, "uptime": uptime})
    return code


if __name__ == "__main__":
    sys.exit(main())
