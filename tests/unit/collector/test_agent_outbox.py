"""The bounded buffer: order kept, oldest dropped and counted."""

from __future__ import annotations

import pytest

from signalfire.collector.outbox import Outbox, Outgoing


def item(n: int) -> Outgoing:
    return Outgoing("sf.metrics.h", str(n).encode(), f"id-{n}")


def drain(outbox: Outbox) -> list[int]:
    taken = []
    while (got := outbox.take()) is not None:
        taken.append(int(got.data))
    return taken


def test_first_in_first_out() -> None:
    outbox = Outbox(10)
    for n in range(5):
        outbox.put(item(n))
    assert len(outbox) == 5
    assert drain(outbox) == [0, 1, 2, 3, 4]
    assert outbox.dropped == 0


def test_full_outbox_drops_the_oldest_and_counts() -> None:
    outbox = Outbox(3)
    for n in range(7):
        outbox.put(item(n))
    assert drain(outbox) == [4, 5, 6]
    assert outbox.dropped == 4


def test_put_back_goes_first() -> None:
    outbox = Outbox(3)
    for n in range(3):
        outbox.put(item(n))
    first = outbox.take()
    assert first is not None
    outbox.put_back(first)
    assert drain(outbox) == [0, 1, 2]


def test_put_back_into_a_refilled_outbox_drops_it() -> None:
    outbox = Outbox(2)
    outbox.put(item(0))
    taken = outbox.take()
    assert taken is not None
    outbox.put(item(1))
    outbox.put(item(2))
    outbox.put_back(taken)  # the oldest of all: it is the one that goes
    assert drain(outbox) == [1, 2]
    assert outbox.dropped == 1


def test_zero_capacity_keeps_nothing() -> None:
    outbox = Outbox(0)
    outbox.put(item(0))
    assert len(outbox) == 0 and outbox.dropped == 1
    with pytest.raises(ValueError):
        Outbox(-1)


def test_a_discarded_message_counts_as_dropped() -> None:
    outbox = Outbox(3)
    outbox.put(item(0))
    outbox.put(item(1))
    taken = outbox.take()
    assert taken is not None
    outbox.discard(taken)
    assert drain(outbox) == [1]
    assert outbox.dropped == 1
