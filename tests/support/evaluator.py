"""The evaluator service in the test's own process, on the test's NATS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService


@contextlib.asynccontextmanager
async def running_evaluator(config: EvaluatorConfig) -> AsyncIterator[EvaluatorService]:
    """An ``EvaluatorService`` started with ``config``; stopped when the block ends."""
    service = EvaluatorService(config)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def replica(
    nats: NatsConfig, rules: Path, replica_id: str, *, partitions: int, failover_after: float
) -> EvaluatorService:
    """An evaluator replica (not started) judging its share of ``partitions`` host partitions,
    taking a dead one's over after ``failover_after`` seconds; a 0.1 s tick, no rule-file watch."""
    return EvaluatorService(
        EvaluatorConfig(
            nats=nats,
            rules=[str(rules)],
            tick_interval=Duration(0.1),
            watch_interval=Duration(0),
            replica_id=replica_id,
            partitions=partitions,
            failover_after=Duration(failover_after),
        )
    )
