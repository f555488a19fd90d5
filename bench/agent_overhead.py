"""The agent's cost next to Debian's prometheus-node-exporter, in the same run.

    uv run python bench/agent_overhead.py [--seconds 120] [--intervals 1 5] [--workspace]
        [--check none|http|https|https-noverify] [--source CHECKOUT]

The agent runs as hosts run it: from an agent-only environment (`signalfire-collector` and
its locked dependencies, nothing of the server side, as docs/agent.md installs it), which
this script makes with uv in a temporary directory; `--workspace` runs the workspace's
`signalfire` instead, where nats-py also loads aiohttp (installed for the notifier).

For each interval (1 s, then 5 s) it starts a private nats-server with the contract's
streams, a `signalfire agent` process publishing to it, and node_exporter on a free loopback
port scraped at the same cadence by a small loop; once the agent has published its first
batch, and after a warm-up, it reads both processes' CPU time and RSS from /proc and prints
CPU % of one core, RSS, samples per interval and the ratios. The agent's samples are
counted in the last batch it published to the stream (every batch of the measured time must
have arrived); node_exporter's are the non-comment lines of its last scrape. Needs the
`prometheus-node-exporter` Debian package (installed with apt-get if missing, as root).

``--check http`` or ``https`` gives the agent one HTTP check, run every interval, against a
loopback server in this process (https: a certificate from a private CA the check trusts
with ``tls_ca``, so every run verifies it and reads its expiry; ``https-noverify``: with
``tls_verify: false``). ``--source`` measures the agent of another checkout of the
repository (its code and lockfile) with this script, so two versions are compared with the
same bench under the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import MetricBatch, decode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
from devstack import REPO, NatsServer, free_port

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
#: Time for both processes to start and the agent's rates to prime before measuring, once
#: the agent's first batch is in the stream.
WARMUP = 5.0
#: How long the agent may take to publish its first batch: its fresh environment compiles the
#: bytecode of every module it imports on that first start, seconds on a loaded machine.
FIRST_BATCH_LIMIT = 60.0
TICKS = os.sysconf("SC_CLK_TCK")
HOST = "bench-agent"


def ensure_node_exporter() -> None:
    if os.path.exists(NODE_EXPORTER):
        return
    if os.geteuid() != 0:
        sys.exit("needs prometheus-node-exporter: apt-get install prometheus-node-exporter")
    install = ["apt-get", "install", "-y", "-q", "prometheus-node-exporter"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


def find_uv() -> str:
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(REPO / ".signalfire/tools/bin/uv")):
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("uv not found: run `make sync` first")


def agent_only_env(work: Path, source: Path) -> str:
    """A virtual environment with the agent's distribution and its locked dependencies
    only; returns its ``signalfire``. The two local packages are installed editable (a
    path entry to their sources), so the agent measured is the code of ``source``."""
    uv, venv = find_uv(), work / "agent-venv"

    def run(*command: str) -> str:
        return subprocess.run(command, cwd=source, check=True, capture_output=True, text=True).stdout

    run(uv, "venv", "-q", "--python", sys.executable, str(venv))
    requirements = work / "agent-requirements.txt"
    requirements.write_text(
        run(uv, "export", "-q", "--frozen", "--package", "signalfire-collector", "--no-dev", "--no-hashes")
    )
    run(uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(requirements))
    return str(venv / "bin" / "signalfire")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def check_config(kind: str, work: Path) -> Iterator[list[str]]:
    """The agent's ``--config`` arguments for one HTTP check of ``kind`` (none: no arguments),
    with the server it probes running meanwhile."""
    if kind == "none":
        yield []
        return
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    server.daemon_threads = True
    scheme = kind.partition("-")[0]
    check = f"url: '{scheme}://127.0.0.1:{server.server_address[1]}/health', body_match: ok"
    if scheme == "https":
        ca = trustme.CA()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        ca.cert_pem.write_to_path(str(work / "bench-ca.pem"))
        check += ", tls_verify: false" if kind == "https-noverify" else f", tls_ca: '{work / 'bench-ca.pem'}'"
    config = work / f"agent-{kind}.yaml"
    config.write_text(f"checks:\n  http:\n    - {{{check}}}\n")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ["--config", str(config)]
    finally:
        server.shutdown()
        server.server_close()


async def create_streams(url: str) -> None:
    config = NatsConfig(url=url)
    nc = await connect(config, "agent-bench", max_reconnect_attempts=3)
    try:
        await ensure_streams(nc.jetstream(), config)
    finally:
        await nc.close()


async def published(url: str) -> tuple[int, MetricBatch]:
    """How many batches the agent published, and the last one."""
    config = NatsConfig(url=url)
    nc = await connect(config, "agent-bench", max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        subject = config.subjects.metrics(HOST)
        info = await js.stream_info(config.subjects.metrics_stream, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        last = await js.get_last_msg(config.subjects.metrics_stream, subject)
        assert last.data is not None
        return count, decode(last.data, MetricBatch)
    finally:
        await nc.close()


async def first_batch(url: str, agent: subprocess.Popen[bytes]) -> None:
    """Return once the agent has published a batch (or exited: the caller reports that)."""
    config = NatsConfig(url=url)
    subject = config.subjects.metrics(HOST)
    nc = await connect(config, "agent-bench", max_reconnect_attempts=3)
    try:
        deadline = time.monotonic() + FIRST_BATCH_LIMIT
        while agent.poll() is None:
            info = await nc.jetstream().stream_info(config.subjects.metrics_stream, subjects_filter=subject)
            if info.state.subjects:
                return
            if time.monotonic() > deadline:
                sys.exit(f"the agent published no batch in {FIRST_BATCH_LIMIT:g} s")
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


def measure(
    interval: float, seconds: float, work: Path, signalfire: str, agent_args: list[str]
) -> dict[str, dict[str, float]]:
    nats = NatsServer(work / f"nats-{interval}").start()
    asyncio.run(create_streams(nats.url))
    port = free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
    env.update(SF_NATS_URL=nats.url, SF_INTERVAL=f"{interval}s", SF_LOG_LEVEL="warning", SF_HOSTNAME=HOST)
    agent = subprocess.Popen(
        [signalfire, "agent", *agent_args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    exporter = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(first_batch(nats.url, agent))
        time.sleep(WARMUP)
        for name, proc in (("agent", agent), ("node_exporter", exporter)):
            if proc.poll() is not None:
                stderr = agent.stderr.read().decode() if proc is agent and agent.stderr else ""
                sys.exit(f"{name} exited with {proc.returncode}: {stderr}")
        batches_before = asyncio.run(published(nats.url))[0]
        start = {p: cpu_seconds(p.pid) for p in (agent, exporter)}
        began = time.monotonic()
        lines = 0
        next_scrape = began
        while time.monotonic() - began < seconds:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            lines = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            next_scrape += interval
            time.sleep(max(0.0, next_scrape - time.monotonic()))
        elapsed = time.monotonic() - began
        cpu = {p: cpu_seconds(p.pid) - start[p] for p in (agent, exporter)}
        rss = {p: rss_bytes(p.pid) for p in (agent, exporter)}
        batches_after, last = asyncio.run(published(nats.url))
        if batches_after - batches_before < elapsed / interval - 2:
            sys.exit(
                f"the agent published {batches_after - batches_before} batches in {elapsed:.0f} s "
                f"at {interval:g} s: it fell behind or lost batches"
            )
        checked = {s.name: s.value for s in last.samples if s.name.startswith("check.http.")}
        if agent_args and checked.get("check.http.up") != 1.0:
            sys.exit(f"the agent's HTTP check did not pass: {checked}")
        samples = {agent: float(len(last.samples)), exporter: float(lines)}
        return {
            name: {"cpu": 100.0 * cpu[proc] / elapsed, "rss": rss[proc] / 2**20, "samples": samples[proc]}
            for name, proc in (("agent", agent), ("node_exporter", exporter))
        }
    finally:
        for proc in (agent, exporter):
            proc.terminate()
        for name, proc in (("agent", agent), ("node_exporter", exporter)):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop within 10 s of SIGTERM: killed", file=sys.stderr)
                proc.kill()
                proc.wait()
        nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="measured time per interval (default 120)"
    )
    parser.add_argument(
        "--intervals", type=float, nargs="+", default=[1.0, 5.0], help="intervals in seconds (default 1 5)"
    )
    parser.add_argument(
        "--workspace", action="store_true", help="run the workspace's signalfire, not an agent-only install"
    )
    parser.add_argument(
        "--check",
        choices=["none", "http", "https", "https-noverify"],
        default="none",
        help="give the agent one HTTP(S) check against a loopback server (https-noverify: tls_verify false)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the checkout whose agent is measured, in an agent-only install (default: this one)",
    )
    args = parser.parse_args()
    if args.workspace and args.source != REPO:
        parser.error("--workspace runs this checkout's signalfire: leave out --source")
    logging.basicConfig(level=logging.ERROR)  # not the bench's own NATS connections coming and going
    ensure_node_exporter()
    work = Path(tempfile.mkdtemp(prefix="sf-agent-bench-"))
    try:
        if args.workspace:
            signalfire, kind = str(Path(sys.executable).parent / "signalfire"), "the workspace"
        else:
            signalfire, kind = agent_only_env(work, args.source.resolve()), "an agent-only install"
            if args.source != REPO:
                kind += f" of {args.source}"
        print(
            f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; agent from {kind}; "
            f"HTTP check: {args.check}; {args.seconds:g} s per interval"
        )
        print(f"{'interval':>8} {'process':<14} {'CPU % core':>10} {'RSS MB':>7} {'samples':>8}")
        for interval in args.intervals:
            with check_config(args.check, work) as agent_args:
                result = measure(interval, args.seconds, work, signalfire, agent_args)
            for name, row in result.items():
                cpu, rss, samples = row["cpu"], row["rss"], row["samples"]
                print(f"{interval:>7g}s {name:<14} {cpu:>10.2f} {rss:>7.1f} {samples:>8.0f}")
            a, n = result["agent"], result["node_exporter"]
            print(
                f"{interval:>7g}s {'agent / n_e':<14} {a['cpu'] / max(n['cpu'], 1e-9):>9.2f}x "
                f"{a['rss'] / n['rss']:>6.2f}x {a['samples'] / n['samples']:>7.2f}x",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
