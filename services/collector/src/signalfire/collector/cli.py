"""``signalfire agent [--config FILE] [--once] [--list-metrics]``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from signalfire.collector.agent import Agent
from signalfire.collector.config import AgentConfig
from signalfire.config import load_config
from signalfire.events import encode
from signalfire.log import configure_logging
from signalfire.runner import run_service, serve

#: How long ``--once`` waits between a priming collection and the one it prints, so rates
#: and CPU usage cover a real span of time.
ONCE_PRIME_SECONDS = 0.5


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the host agent: collect metrics and publish them to NATS",
        description="Collect host metrics every interval and publish them to NATS JetStream. "
        "Every setting can also come from SF_* environment variables (SF_NATS_URL, SF_INTERVAL, ...).",
    )
    parser.add_argument("--config", metavar="FILE", help="agent YAML config (optional)")
    parser.add_argument(
        "--once",
        action="store_true",
        help="collect one batch, print it as JSON to stdout and exit, without connecting to NATS",
    )
    parser.add_argument(
        "--list-metrics",
        action="store_true",
        help="print every metric the agent can emit as Markdown (docs/metrics.md) and exit",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.list_metrics:
        from signalfire.collector.catalog import metrics_markdown  # every check kind: only here

        sys.stdout.write(metrics_markdown())
        return 0

    async def main() -> None:
        config = load_config(AgentConfig, args.config)
        configure_logging("agent", config.log_level, config.log_format)
        agent = Agent(config)
        if args.once:
            try:
                await agent.collect_batch()  # primes the rates
                await asyncio.sleep(ONCE_PRIME_SECONDS)
                batch = await agent.collect_batch(run_checks=True)
            finally:
                await agent.checks.stop()
            sys.stdout.buffer.write(encode(batch) + b"\n")
            sys.stdout.flush()
            return
        await serve(agent)

    return run_service(main)
