"""Reading people's alert actions back (what an evaluator does after a start, a takeover or a
reconnect) against reading the same messages with batched direct gets, in one run.

A private nats-server and an alerts stream like ``SF_ALERTS``: ``--actions`` actions on
``sf.actions.alerts`` among ``--others`` times as many alert events and delivery results (the
actions are a small share of the stream). The actions are read back ``--rounds`` times each
way by one client: with :func:`signalfire.evaluator.replay.read_actions` (the leader's
``STREAM.MSG.GET`` with ``next_by_subj``, one message a request: the evaluator's way, which
the leader answers with every action published) and with
:func:`signalfire.bus.direct_messages` on the actions' subject (the raw ceiling: a batch of a
thousand a request, which a follower may answer from behind). Prints
wall time and client CPU per action of each, and the ratio.

    uv run python bench/actions_read.py [--actions 2000] [--others 10] [--rounds 3]
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
from nats.js.api import StreamConfig

from signalfire.bus import direct_messages
from signalfire.evaluator.replay import Read, read_actions
from signalfire.events import AlertAction, encode

ACTIONS = "sf.actions.alerts"


async def run(actions: int, others: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(
                    name="ALERTS", subjects=["sf.alerts.*", ACTIONS, "sf.notifications.*"], allow_direct=True
                )
            )
            start = time.time() - 1
            event = b"x" * 600  # an alert event or a delivery result, about its size
            pending = []
            for i in range(actions):
                action = AlertAction(
                    alert_id=f"fp{i}:1", action="ack", actor="ana", time=time.time(), id=str(i)
                )
                pending.append(await js.publish_async(ACTIONS, encode(action)))
                for j in range(others):
                    subject = f"sf.alerts.web{j}" if j % 2 else "sf.notifications.slack"
                    pending.append(await js.publish_async(subject, event))
            await asyncio.gather(*pending)
            for _ in range(rounds):
                wall, cpu = time.perf_counter(), time.process_time()
                read = Read()
                got = [
                    data
                    async for data, _ in read_actions(js, "ALERTS", ACTIONS, start, seconds=60, result=read)
                ]
                leader = (time.perf_counter() - wall, time.process_time() - cpu)
                assert len(got) == actions and read.truncated is None, (len(got), read.truncated)
                wall, cpu = time.perf_counter(), time.process_time()
                kept = [m.data async for m in direct_messages(nc, "ALERTS", seq=1, subject=ACTIONS)]
                direct = (time.perf_counter() - wall, time.process_time() - cpu)
                assert len(kept) == actions
                print(
                    f"{actions:,} actions among {actions * (others + 1):,} messages: one by one from the "
                    f"leader {leader[0]:.3f} s ({leader[0] / actions * 1e6:.0f} µs an action, "
                    f"{leader[1] / actions * 1e6:.0f} µs CPU), batched direct gets "
                    f"{direct[0]:.3f} s ({direct[0] / actions * 1e6:.0f} µs, "
                    f"{direct[1] / actions * 1e6:.0f} µs CPU): {leader[0] / direct[0]:.2f}x the time"
                )
            await nc.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=2000)
    parser.add_argument("--others", type=int, default=10, help="other messages per action")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.actions, args.others, args.rounds))


if __name__ == "__main__":
    main()
