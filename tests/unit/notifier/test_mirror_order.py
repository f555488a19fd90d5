"""A mirror applies what its watch gives and what a whole read found in revision order:
nothing older undoes anything newer, whichever of the two brought it."""

from __future__ import annotations

from typing import Any, cast

from nats.js.kv import KV_DEL, KeyValue

from signalfire.notifier.mirror import Mirror


def entry(key: str, value: bytes, revision: int, operation: str | None = None) -> Any:
    return KeyValue.Entry("sf_silences", key, value, revision, None, None, operation)


def mirror() -> Mirror[bytes]:
    return Mirror(cast(KeyValue, None), ">", bytes)  # only _apply runs here: no bucket is read


def test_an_older_entry_the_watch_gives_after_a_read_found_the_key_deleted_does_not_bring_it_back() -> None:
    m = mirror()
    m._apply(entry("s", b"", 7, KV_DEL), read=True)  # a whole read, ahead of the watch
    m._apply(entry("s", b"old", 5))  # the watch, behind, gives the value the deletion ended
    assert m.entries == {}
    m._apply(entry("s", b"new", 8))  # written after the deletion
    assert m.entries == {"s": (b"new", 8)}


def test_an_older_deletion_does_not_remove_a_newer_value() -> None:
    m = mirror()
    m._apply(entry("s", b"v9", 9), read=True)
    m._apply(entry("s", b"", 6, KV_DEL))  # the watch catching up
    m._apply(entry("s", b"v4", 4))
    assert m.entries == {"s": (b"v9", 9)}
    m._apply(entry("s", b"", 10, KV_DEL))
    assert m.entries == {}
