"""The notifier's KV mirrors against real NATS JetStream: :meth:`Mirror.current` brings a
mirror up to what its bucket held when asked (of the keys it mirrors), by its watch when the
watch gets there, by a whole read when it does not, and callers asking together share one
check."""

from __future__ import annotations

import asyncio
from typing import Any

from signalfire.bus import NatsConfig
from signalfire.notifier.mirror import FRESH_FOR, Mirror


async def mirror_of(
    nc: Any, nats_config: NatsConfig, pattern: str = ">"
) -> tuple[Any, Mirror[bytes], list[str]]:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    checks: list[str] = []
    mirror: Mirror[bytes] = Mirror(kv, pattern, bytes, on_check=checks.append)
    await mirror.start()
    return kv, mirror, checks


async def written(kv: Any, write: str, *args: Any) -> None:
    """A write to the bucket, then :data:`FRESH_FOR`: a check begun before that may answer for
    a call until then, and this one must not."""
    await getattr(kv, write)(*args)
    await asyncio.sleep(FRESH_FOR)


async def test_a_mirror_is_brought_up_to_its_bucket_by_its_watch_or_by_a_whole_read(
    nc: Any, nats_config: NatsConfig
) -> None:
    kv, mirror, checks = await mirror_of(nc, nats_config)
    try:
        await mirror.current()
        assert checks == ["current"]  # an empty bucket, nothing to wait for
        await written(kv, "put", "a", b"1")
        await mirror.current()  # asked as soon as the write was taken: the watch gets there
        assert mirror.entries["a"][0] == b"1"
        assert checks[-1] in {"current", "caught_up"}
        assert mirror._watcher is not None
        await mirror._watcher.stop()  # from here the watch gives nothing, as one whose node died
        await kv.put("b", b"2")
        await written(kv, "put", "a", b"3")
        await mirror.current()
        assert checks[-1] == "read"
        assert {key: value for key, (value, _) in mirror.entries.items()} == {"a": b"3", "b": b"2"}
        await written(kv, "delete", "a")
        await mirror.current()
        assert checks[-1] == "read" and list(mirror.entries) == ["b"]
        await written(kv, "purge", "b")
        await mirror.current()
        assert mirror.entries == {}
        await asyncio.sleep(FRESH_FOR)
        await mirror.current()  # nothing written since: no read
        assert checks[-1] == "current"
        count = len(checks)
        await kv.put("c", b"4")
        await mirror.current()  # within FRESH_FOR of the last check: answered by it
        assert len(checks) == count
    finally:
        await mirror.stop()


async def test_callers_asking_together_share_one_check(nc: Any, nats_config: NatsConfig) -> None:
    kv, mirror, checks = await mirror_of(nc, nats_config)
    try:
        await kv.put("a", b"1")
        await asyncio.gather(*(mirror.current() for _ in range(50)))
        assert len(checks) == 1  # begun by the first caller, within FRESH_FOR of the others
        assert mirror.entries["a"][0] == b"1"
    finally:
        await mirror.stop()


async def test_a_mirror_of_some_keys_is_checked_against_those_keys_alone(
    nc: Any, nats_config: NatsConfig
) -> None:
    """The notifier's tracks (``track.>``) share their bucket with its ledger and batches:
    writes to those must not make the tracks' mirror look behind, and when it is behind only
    its own keys are read."""
    kv, mirror, checks = await mirror_of(nc, nats_config, "track.>")
    try:
        await mirror.current()
        assert checks == ["current"]  # no track yet: nothing to wait for
        await written(kv, "put", "track.a", b"1")
        await written(kv, "put", "ledger.x", b"L")  # newer than every track
        await mirror.current()
        assert checks[-1] in {"current", "caught_up"} and mirror.entries["track.a"][0] == b"1"
        assert mirror._watcher is not None
        await mirror._watcher.stop()  # the watch gives nothing from here
        await written(kv, "put", "ledger.y", b"L")
        await mirror.current()
        assert checks[-1] == "current"  # no track written: not behind
        await written(kv, "put", "track.b", b"2")
        await mirror.current()
        assert checks[-1] == "read"
        assert {key: value for key, (value, _) in mirror.entries.items()} == {
            "track.a": b"1",
            "track.b": b"2",
        }
        await written(kv, "delete", "track.a")
        await mirror.current()
        assert checks[-1] == "read" and list(mirror.entries) == ["track.b"]
    finally:
        await mirror.stop()
