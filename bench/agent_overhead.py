"""The agent's cost next to Debian's prometheus-node-exporter, in the same run.

    uv run python bench/agent_overhead.py [--seconds 120]

For each interval (1 s, then 5 s) it starts a private nats-server, a `signalfire agent`
process publishing to it, and node_exporter on a free loopback port scraped at the same
cadence by a small loop; after a warm-up it reads both processes' CPU time and RSS from
/proc and prints CPU % of one core, RSS, samples per interval and the ratios. Needs the
`prometheus-node-exporter` Debian package (installed with apt-get if missing, as root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
from devstack import NatsServer, free_port

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
WARMUP = 3.0
TICKS = os.sysconf("SC_CLK_TCK")


def ensure_node_exporter() -> None:
    if os.path.exists(NODE_EXPORTER):
        return
    if os.geteuid() != 0:
        sys.exit("needs prometheus-node-exporter: apt-get install prometheus-node-exporter")
    subprocess.run(["apt-get", "install", "-y", "prometheus-node-exporter"], check=True, capture_output=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(interval: float, seconds: float, work: Path) -> dict[str, dict[str, float]]:
    nats = NatsServer(work / f"nats-{interval}").start()
    port = free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
    env.update(SF_NATS_URL=nats.url, SF_INTERVAL=f"{interval}s", SF_LOG_LEVEL="warning")
    signalfire = str(Path(sys.executable).parent / "signalfire")
    agent = subprocess.Popen(
        [signalfire, "agent"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    exporter = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples = {"agent": 0.0, "node_exporter": 0.0}
    try:
        time.sleep(WARMUP)
        once = subprocess.run(
            [signalfire, "agent", "--once"], env=env, capture_output=True, text=True, check=True
        )
        samples["agent"] = float(once.stdout.count('"name":'))
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
        samples["node_exporter"] = float(lines)
        result = {}
        for name, proc in (("agent", agent), ("node_exporter", exporter)):
            result[name] = {
                "cpu": 100.0 * (cpu_seconds(proc.pid) - start[proc]) / elapsed,
                "rss": rss_bytes(proc.pid) / 2**20,
                "samples": samples[name],
            }
        return result
    finally:
        for proc in (agent, exporter):
            proc.terminate()
            proc.wait(10)
        nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="measured time per interval (default 120)"
    )
    args = parser.parse_args()
    ensure_node_exporter()
    work = Path(tempfile.mkdtemp(prefix="sf-agent-bench-"))
    try:
        print(f"{'interval':>8} {'process':<14} {'CPU % core':>10} {'RSS MB':>7} {'samples':>8}")
        for interval in (1.0, 5.0):
            result = measure(interval, args.seconds, work)
            for name, row in result.items():
                print(
                    f"{interval:>7}s {name:<14} {row['cpu']:>10.2f} {row['rss']:>7.1f} {row['samples']:>8.0f}"
                )
            a, n = result["agent"], result["node_exporter"]
            print(
                f"{interval:>7}s {'agent / n_e':<14} {a['cpu'] / max(n['cpu'], 1e-9):>9.2f}x "
                f"{a['rss'] / n['rss']:>6.2f}x {a['samples'] / n['samples']:>7.2f}x"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
