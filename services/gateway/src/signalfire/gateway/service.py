"""The gateway process: database, migrations, ingest, the silences mirror and the HTTP API in
one event loop; with ``ingest_workers``, the ingest runs in worker processes instead
(:mod:`.workers`) and this process is fed what they commit (:mod:`.committed`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator

import asyncpg
import uvicorn
from nats.aio.client import Client as NATS

from signalfire.bus import connect, ensure_streams
from signalfire.consumers import Backoff
from signalfire.gateway.api import create_app
from signalfire.gateway.auth import ensure_admin_token
from signalfire.gateway.commits import Commits
from signalfire.gateway.committed import CommittedFeed, CommittedPublisher, new_origin
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.ingest import Ingest
from signalfire.gateway.live import LiveFeed
from signalfire.gateway.maintenance import Maintenance
from signalfire.gateway.migrate import migrate
from signalfire.gateway.rollup import Rollups
from signalfire.gateway.silence_mirror import SilenceMirror
from signalfire.gateway.store import LatestValues, Store, open_pool
from signalfire.gateway.stream import StreamHub
from signalfire.gateway.workers import IngestWorkers
from signalfire.runner import Essentials
from signalfire.telemetry import Registry, parse_listen

log = logging.getLogger("signalfire.gateway")

#: Seconds :meth:`GatewayService.start` waits for its ingest workers to start ingesting.
WORKERS_READY_WITHIN = 60.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service's runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(listen: str) -> socket.socket:
    """A listening socket for ``host:port``; binding here makes a taken port an ``OSError``
    from :meth:`GatewayService.start` instead of an exit from inside uvicorn."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says it is TCP; without it every kept-alive answer waited ~40 ms
    # for Nagle and delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class GatewayService:
    """Stores the bus in the database and serves the API.

    ``pool`` and ``nc`` may be handed in (tests, embedding); otherwise :meth:`start` creates
    them from ``config`` and :meth:`stop` closes them. ``clock`` is the one wall clock the API,
    the live stream, retention and rollup repair read (tests pass their own).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        pool: asyncpg.Pool | None = None,
        nc: NATS | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.registry = Registry("signalfire_gateway")
        self.latest = latest = LatestValues()
        self.registry.gauge("latest_series", "Series with a latest value in memory", function=latest.count)
        self.hub = StreamHub(ring_seconds=config.stream_ring_seconds, clock=clock)
        self.pool = pool
        self.nc = nc
        self._own_pool = pool is None
        self._own_nc = nc is None
        self.ingest: Ingest | None = None
        #: The ingest worker processes (``ingest_workers`` > 0; then ``ingest`` is ``None``).
        self.workers: IngestWorkers | None = None
        #: This process's frames (what its own ingest committed) carry this id.
        self.origin = new_origin()
        self.feed: CommittedFeed | None = None
        self.silences: SilenceMirror | None = None
        #: What the consumers committed, for the API's waits (actions, silences).
        self.commits = Commits()
        self.maintenance: Maintenance | None = None
        self._server: _Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        #: The loops it cannot run without; one that ends stops the process (signalfire.runner).
        self.essentials = Essentials()
        #: The address the API listens on (the real port when ``listen`` asked for port 0).
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        """Connect, migrate, bootstrap the admin token, start ingest and the HTTP server.

        Raises ``OSError`` (or an asyncpg/NATS error) when the database, NATS or the listen
        address is unusable; whatever was started is stopped again.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        if self.pool is None:
            self.pool = await open_pool(config.database_url, config.db_pool_size)
        async with self.pool.acquire() as conn:
            await migrate(conn)
        await ensure_admin_token(self.pool, config.admin_token_file)
        if self.nc is None:
            self.nc = await connect(config.nats, "signalfire-gateway", echo=False)
        js = self.nc.jetstream()
        await ensure_streams(js, config.nats)
        sock = _bind(config.listen)
        self.address = sock.getsockname()[:2]
        rollups = Rollups(
            self.pool,
            retention=config.retention,
            repair_after=float(config.rollup_repair_after),
            registry=self.registry,
            clock=self.clock,
        )
        self.maintenance = Maintenance(self.pool, config.retention, rollups, clock=self.clock)
        await self.maintenance.start()
        self.essentials.watch(*self.maintenance.tasks)
        store = Store(self.pool)
        await store.load_latest(self.latest)
        live = LiveFeed(self.hub)
        ingesting_here = config.ingest_workers == 0
        # Frames of every other ingest (workers, other gateways); this process's own ingest
        # feeds the hub directly, its frames are skipped by their origin.
        self.feed = CommittedFeed(
            self.nc,
            config.nats.subjects,
            latest=self.latest,
            live=live,
            commits=self.commits,
            registry=self.registry,
            origin=self.origin if ingesting_here else None,
        )
        await self.feed.start()
        if ingesting_here:
            self.ingest = Ingest(
                config,
                js,
                store,
                self.registry,
                self.latest,
                rollups=rollups,
                live=live,
                commits=self.commits,
                committed=CommittedPublisher(self.nc, config.nats.subjects, self.origin, self.registry),
            )
            await self.ingest.start()
            self.essentials.watch(*self.ingest.tasks)
            db_errors = self.ingest.db_errors
            backoff = self.ingest.backoff
        else:
            self.workers = IngestWorkers(config, config.ingest_workers, self.registry)
            await self.workers.start()
            self.essentials.watch(*self.workers.tasks)
            # Started means ingesting, as with ingest in this process; a worker that cannot start
            # (database or NATS away) is left to its supervision, which keeps trying.
            if not await self.workers.wait_ready(WORKERS_READY_WITHIN):
                log.warning(
                    "not every ingest worker ingests yet; continuing",
                    extra={"running": self.workers.running(), "workers": config.ingest_workers},
                )
            db_errors = self.registry.counter(
                "db_errors", "Database errors (the work is retried)", ["consumer"]
            )
            backoff = Backoff(first=0.5, cap=float(config.max_backoff))
        self.silences = SilenceMirror(
            await js.key_value(config.nats.subjects.bucket("silences")),
            self.pool,
            self.registry,
            db_errors=db_errors,
            commits=self.commits,
            backoff=backoff,
            clock=self.clock,
        )
        await self.silences.start()
        self.essentials.watch(*self.silences.tasks)
        app = create_app(
            config,
            pool=self.pool,
            registry=self.registry,
            nc=self.nc,
            latest=self.latest,
            store=store,
            hub=self.hub,
            clock=self.clock,
            commits=self.commits,
        )
        self._server = _Server(
            uvicorn.Config(
                app,
                log_config=None,
                lifespan="on",
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=5,
                # Per-message deflate keeps a compressor per WebSocket: 74 KB per connection
                # against 31 KB without (bench/stream_fanout.py), for frames of a few hundred
                # bytes that are sent at most ten times a second.
                ws_per_message_deflate=False,
            )
        )
        self._server_task = self.essentials.spawn(self._server.serve(sockets=[sock]), "gateway-http")
        while not self._server.started:
            if self._server_task.done():
                self._server_task.result()
                raise RuntimeError("the HTTP server stopped during start")
            await asyncio.sleep(0.01)
        log.info("gateway started", extra={"listen": f"{self.address[0]}:{self.address[1]}"})

    async def stop(self) -> None:
        """Stop serving, finish the ingest round in flight, close what this service opened."""
        self.essentials.stop()
        # Live streams end first (their clients reconnect and resume), so the server can stop.
        self.hub.close()
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._server_task
        self._server = self._server_task = None
        if self.silences is not None:
            await self.silences.stop()
            self.silences = None
        if self.ingest is not None:
            await self.ingest.stop()
            self.ingest = None
        if self.workers is not None:
            await self.workers.stop()
            self.workers = None
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
        if self.maintenance is not None:
            await self.maintenance.stop()
            self.maintenance = None
        if self.nc is not None and self._own_nc:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None
        if self.pool is not None and self._own_pool:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=10)
            self.pool = None
