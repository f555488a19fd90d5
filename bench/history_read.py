"""Reading a stream's history back: direct gets (what the evaluator uses) against an ordered
consumer (what it used before), in one run.

A private nats-server, a stream with ``allow_direct`` holding ``--messages`` messages of
``--size`` bytes over 400 subjects; the whole stream read back ``--rounds`` times each way by
one client: with an ephemeral ordered consumer (nats-py's, flow control and heartbeats as the
evaluator had it) and with :func:`signalfire.bus.direct_messages` (batched direct gets, no
consumer: docs/security.md). Prints wall and client CPU per message of each and the ratio.
The evaluator reads a taken partition's history and what it missed during a reconnect this
way; its takeover read is bounded in time (docs/scaling.md), so a slower read leaves out more
of the oldest history, never the recent part.

    uv run python bench/history_read.py [--messages 50000] [--size 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import nats
from devstack import NatsServer
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

from signalfire.bus import direct_messages


async def run(messages: int, size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="HISTORY", subjects=["h.>"], allow_direct=True))
            body = b"x" * size
            acks = [await js.publish_async(f"h.host{i % 400}", body) for i in range(messages)]
            await asyncio.gather(*acks)
            for _ in range(rounds):
                wall, cpu = time.perf_counter(), time.process_time()
                sub = await js.subscribe(
                    "h.>",
                    ordered_consumer=True,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
                    idle_heartbeat=1.0,
                )
                for _ in range(messages):
                    await sub.next_msg(timeout=5)
                await sub.unsubscribe()
                ordered = (time.perf_counter() - wall, time.process_time() - cpu)
                wall, cpu = time.perf_counter(), time.process_time()
                read = sum([1 async for _ in direct_messages(nc, "HISTORY", seq=1)])
                direct = (time.perf_counter() - wall, time.process_time() - cpu)
                assert read == messages, f"direct gets read {read} of {messages}"
                per = [t / messages * 1e6 for t in (ordered[1], direct[1])]
                print(
                    f"{messages:,} messages of {size} B: ordered consumer {ordered[0]:.2f} s "
                    f"({per[0]:.1f} µs CPU a message), direct gets {direct[0]:.2f} s "
                    f"({per[1]:.1f} µs CPU a message): {direct[1] / ordered[1]:.2f}x the CPU"
                )
            await nc.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.size, args.rounds))


if __name__ == "__main__":
    main()
