"""The bounded buffer: order kept, oldest dropped and counted, spooled to disk across restarts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from signalfire.collector.outbox import Outbox, Outgoing


def item(n: int) -> Outgoing:
    return Outgoing("sf.metrics.h", str(n).encode(), f"id-{n}")


def drain(outbox: Outbox) -> list[int]:
    taken = []
    while got := outbox.take():
        outbox.done(got[0])
        taken.append(int(got[0].data))
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


def test_take_a_window_and_put_back_the_failed_part_first() -> None:
    outbox = Outbox(10)
    for n in range(6):
        outbox.put(item(n))
    window = outbox.take(4)
    assert [int(i.data) for i in window] == [0, 1, 2, 3]
    outbox.put_back(window[2:])  # 0 and 1 were acknowledged
    assert drain(outbox) == [2, 3, 4, 5]


def test_put_back_into_a_refilled_outbox_drops_it() -> None:
    outbox = Outbox(2)
    outbox.put(item(0))
    taken = outbox.take()
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
    [taken] = outbox.take()
    outbox.discard(taken)
    assert drain(outbox) == [1]
    assert outbox.dropped == 1


def test_spool_survives_a_restart_in_order(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = Outbox(10, spool)
    for n in range(5):
        first.put(item(n))
    [sent] = first.take()
    first.done(sent)  # acknowledged: gone from disk too
    window = first.take(2)
    first.put_back(window)  # not acknowledged: stays
    # The agent stops (or crashes) here; a new one starts with the same directory.
    second = Outbox(10, spool)
    assert len(second) == 4
    replayed = second.take(10)
    assert [int(i.data) for i in replayed] == [1, 2, 3, 4]
    assert [i.msg_id for i in replayed] == ["id-1", "id-2", "id-3", "id-4"]  # deduplicated on replay
    second.put_back(replayed)
    second.put(item(5))  # after the replayed ones
    assert drain(second) == [1, 2, 3, 4, 5]
    assert list(spool.iterdir()) == []


def test_spool_respects_the_capacity_when_loading_and_dropping(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = Outbox(10, spool)
    for n in range(6):
        first.put(item(n))
    second = Outbox(3, spool)
    assert second.dropped == 3
    assert len(list(spool.iterdir())) == 3
    second.put(item(6))
    assert drain(second) == [4, 5, 6]
    assert list(spool.iterdir()) == []


def test_spool_ignores_half_written_and_unreadable_files(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "0000000000000001.tmp").write_bytes(b"half")
    (spool / "0000000000000002.msg").write_bytes(b"no newlines")
    (spool / "0000000000000003.msg").write_bytes(b"sf.metrics.h\nid-3\n3")
    outbox = Outbox(10, spool)
    assert drain(outbox) == [3]
    assert not (spool / "0000000000000001.tmp").exists()


def test_a_spool_file_whose_head_is_not_utf8_is_skipped(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "0000000000000001.msg").write_bytes(b"sf.metrics.\xff\nid-1\n1")
    (spool / "0000000000000002.msg").write_bytes(b"sf.metrics.h\nid-\xfe\n2")
    (spool / "0000000000000003.msg").write_bytes(b"sf.metrics.h\nid-3\n3")
    assert drain(Outbox(10, spool)) == [3]


def test_a_spool_that_cannot_be_written_is_logged_and_the_batch_kept_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    outbox = Outbox(10, spool)
    shutil.rmtree(spool)  # the disk under it went away
    with caplog.at_level(logging.WARNING, logger="signalfire.collector.outbox"):
        outbox.put(item(1))
    [warning] = caplog.records
    assert warning.getMessage() == "cannot write to the spool"
    assert drain(outbox) == [1]  # published from memory all the same
    assert outbox.dropped == 0


def test_a_spool_reopened_without_room_drops_and_counts_what_it_held(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = Outbox(10, spool)
    for n in range(3):
        first.put(item(n))
    # The agent restarted with buffer_size 0: nothing may wait, the spooled batches included.
    second = Outbox(0, spool)
    assert (len(second), second.dropped) == (0, 3)
    assert list(spool.iterdir()) == []
