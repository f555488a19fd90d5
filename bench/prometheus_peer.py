"""Debian's Prometheus + Alertmanager at their tightest settings, as the peer of
``bench/alert_latency.py``: how long from a metric's change to the alert's webhook.

Private instances on free loopback ports with their config and data in a temporary
directory (never the system services, which this module neither starts nor stops):

- a tiny exporter served by this module (``/metrics``, one gauge per trial);
- Prometheus scraping it every 1 s, ``evaluation_interval: 1s``, one alerting rule
  ``bench_cpu_usage_percent > 90`` with ``for: 0s``;
- Alertmanager with ``group_by: ['...']`` (every alert its own group), ``group_wait: 0s``,
  ``group_interval: 1s``, routing to a webhook receiver served by this module.

Each trial uses its own ``trial`` label: the gauge is exposed low for at least one scrape,
set high (the clock starts), the firing webhook is awaited (the clock stops), then set low
again and the resolved webhook awaited, so every trial is a new alert in a new group. A
random pause before each trial keeps the change's phase independent of the scrape and
evaluation cycles. Missing packages are installed with ``apt-get`` (as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.support import serve_http

PACKAGES = ("prometheus", "prometheus-alertmanager")
METRIC = "bench_cpu_usage_percent"
#: How long one trial may wait for a webhook before the benchmark gives up.
TRIAL_LIMIT = 30.0
START_LIMIT = 60.0


def ensure_installed() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``prometheus-alertmanager``, installing Debian's packages
    (non-interactively, without recommends) when either is missing."""
    found = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    if found[0] and found[1]:
        return found[0], found[1]
    if os.geteuid() != 0:
        sys.exit("the peer needs Debian's packages: apt-get install " + " ".join(PACKAGES))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    print("installing " + " ".join(PACKAGES) + " with apt-get …", file=sys.stderr)
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    if not (found[0] and found[1]):
        sys.exit("apt-get did not install " + " ".join(PACKAGES))
    return found[0], found[1]


def version(binary: str) -> str:
    """The first line of ``binary --version`` (both tools print it on stderr)."""
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].strip() if (done.stdout or done.stderr) else binary


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Peer:
    """The exporter, the webhook receiver and the two child processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prometheus_bin, self.alertmanager_bin = ensure_installed()
        #: Exposed gauges: trial label → value.
        self.gauges: dict[str, float] = {}
        self.scrapes = 0
        #: Webhook arrivals: (trial, status) → perf_counter time.
        self.arrivals: dict[tuple[str, str], float] = {}
        self._arrived = asyncio.Event()
        self._scraped = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    # HTTP: the exporter and the webhook receiver ----------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http(reader, writer, self._request)

    def _request(self, method: bytes, path: bytes, body: bytes, arrived: float) -> bytes:
        if method == b"POST":  # Alertmanager's webhook
            for alert in json.loads(body).get("alerts", []):
                key = (alert.get("labels", {}).get("trial", ""), alert.get("status", ""))
                self.arrivals.setdefault(key, arrived)
            self._arrived.set()
            return b""
        if path.startswith(b"/metrics"):  # Prometheus scraping the exporter
            self.scrapes += 1
            self._scraped.set()
            lines = (f'{METRIC}{{trial="{trial}"}} {value}\n' for trial, value in self.gauges.items())
            return "".join(lines).encode()
        return b""

    async def _arrival(self, key: tuple[str, str]) -> float:
        while key not in self.arrivals:
            self._arrived.clear()
            await self._arrived.wait()
        return self.arrivals[key]

    # Processes ---------------------------------------------------------------------------

    async def start(self) -> None:
        exporter = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._servers.append(exporter)
        exporter_port = int(exporter.sockets[0].getsockname()[1])
        hook_port = exporter_port  # one server answers both paths
        prom_port, am_port = _free_port(), _free_port()
        root = self.root
        (root / "prom-data").mkdir(parents=True, exist_ok=True)
        (root / "am-data").mkdir(parents=True, exist_ok=True)
        (root / "rules.yml").write_text(
            f"""\
groups:
  - name: bench
    interval: 1s
    rules:
      - alert: BenchCPU
        expr: {METRIC} > 90
        for: 0s
"""
        )
        (root / "prometheus.yml").write_text(
            f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [{root / "rules.yml"}]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]
scrape_configs:
  - job_name: bench
    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]
"""
        )
        (root / "alertmanager.yml").write_text(
            f"""\
route:
  receiver: bench
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: bench
    webhook_configs:
      - url: http://127.0.0.1:{hook_port}/hook
        send_resolved: true
"""
        )
        self._spawn(
            "alertmanager",
            [
                self.alertmanager_bin,
                f"--config.file={root / 'alertmanager.yml'}",
                f"--storage.path={root / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip port: a single private instance
                "--log.level=warn",
            ],
        )
        self._spawn(
            "prometheus",
            [
                self.prometheus_bin,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
        )
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + START_LIMIT
        for url in (f"http://127.0.0.1:{am_port}/-/ready", f"http://127.0.0.1:{prom_port}/-/ready"):
            while not await loop.run_in_executor(None, _http_ok, url):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise SystemExit(f"the peer did not become ready: {url}; logs in {root}")
                await asyncio.sleep(0.1)
        # Prometheus scraping and the rule group running before the first trial.
        while self.scrapes < 3:
            self._check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"Prometheus does not scrape the exporter; logs in {root}")
            await asyncio.sleep(0.1)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self._procs.append(
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
            )
        )
        log.close()

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args!r} exited with {proc.returncode}; logs in {self.root}")

    async def stop(self) -> None:
        for proc in reversed(self._procs):  # only the PIDs started here
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # Trials ------------------------------------------------------------------------------

    async def trial(self, n: int) -> tuple[float, float]:
        """One alert: (change → firing webhook, change → resolved webhook) in seconds."""
        trial = str(n)
        if trial not in self.gauges:
            self.gauges[trial] = 10.0
            scraped = self.scrapes
            while self.scrapes < scraped + 2:  # seen low at least once
                self._scraped.clear()
                await self._scraped.wait()
        await asyncio.sleep(random.uniform(0.0, 1.0))
        self.gauges[trial] = 99.0
        changed = time.perf_counter()
        firing = await asyncio.wait_for(self._arrival((trial, "firing")), TRIAL_LIMIT)
        self.gauges[trial] = 10.0
        self.gauges[str(n + 1)] = 10.0  # the next trial's series, low from now on
        cleared = time.perf_counter()
        resolved = await asyncio.wait_for(self._arrival((trial, "resolved")), TRIAL_LIMIT)
        del self.gauges[trial]
        return firing - changed, resolved - cleared


async def measure(root: Path, trials: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Run ``warmup`` + ``trials`` trials; the firing and resolved latencies of the counted ones."""
    peer = Peer(root)
    firing: list[float] = []
    resolved: list[float] = []
    await peer.start()
    try:
        for n in range(warmup + trials):
            fired, cleared = await peer.trial(n)
            if n >= warmup:
                firing.append(fired)
                resolved.append(cleared)
                print(
                    f"  peer trial {n - warmup + 1}/{trials}: firing {fired:.3f}s  resolved {cleared:.3f}s",
                    file=sys.stderr,
                )
    finally:
        await peer.stop()
    return firing, resolved
