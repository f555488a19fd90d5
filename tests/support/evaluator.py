"""The evaluator service in the test's own process, on the test's NATS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
