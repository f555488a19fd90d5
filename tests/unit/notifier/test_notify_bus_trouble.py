"""How long an alert event waits out NATS trouble in the notifier's hands (``BusTrouble``)
before it is left to JetStream's redelivery, which uses one of its ``max_deliver``."""

from __future__ import annotations

import nats.errors
import nats.js.errors

from signalfire.notifier.intake import BUS_PATIENCE, BusTrouble


def test_a_stream_without_a_leader_is_retried_with_growing_pauses() -> None:
    trouble = BusTrouble(clock=lambda: 100.0)
    pauses = [trouble.pause(nats.js.errors.NoStreamResponseError()) for _ in range(5)]
    assert pauses == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert trouble.pause(nats.errors.TimeoutError()) == 2.0
    assert trouble.pause(nats.errors.NoRespondersError()) == 2.0


def test_only_the_first_pause_of_the_trouble_says_so() -> None:
    trouble = BusTrouble(clock=lambda: 0.0)
    trouble.pause(nats.errors.TimeoutError())
    assert trouble.first
    trouble.pause(nats.errors.TimeoutError())
    assert not trouble.first


def test_a_refusal_or_another_error_is_not_waited_out() -> None:
    trouble = BusTrouble(clock=lambda: 0.0)
    assert trouble.pause(nats.js.errors.BadRequestError()) is None
    assert trouble.pause(nats.js.errors.KeyWrongLastSequenceError()) is None
    assert trouble.pause(ValueError("a bug")) is None


def test_trouble_past_the_patience_goes_back_to_jetstream() -> None:
    now = [0.0]
    trouble = BusTrouble(clock=lambda: now[0])
    assert trouble.pause(nats.errors.TimeoutError()) is not None
    now[0] = BUS_PATIENCE
    assert trouble.pause(nats.errors.TimeoutError()) is not None
    now[0] = BUS_PATIENCE + 0.1
    assert trouble.pause(nats.errors.TimeoutError()) is None
