"""The notifier's KV mirrors against real NATS JetStream: :meth:`Mirror.current` brings a
mirror up to what its bucket held when asked, by its watch when the watch gets there, by a
whole read when it does not, and callers asking together share one check."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from signalfire.bus import NatsConfig
from signalfire.notifier.mirror import Mirror


async def mirror_of(
    nc: Any, nats_config: NatsConfig, pattern: str = ">"
) -> tuple[Any, Mirror[bytes], list[str]]:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    checks: list[str] = []
    mirror: Mirror[bytes] = Mirror(kv, pattern, bytes, on_check=checks.append)
    await mirror.start()
    return kv, mirror, checks


async def test_a_mirror_is_brought_up_to_its_bucket_by_its_watch_or_by_a_whole_read(
    nc: Any, nats_config: NatsConfig
) -> None:
    kv, mirror, checks = await mirror_of(nc, nats_config)
    try:
        await mirror.current()
        assert checks == ["current"]  # an empty bucket, nothing to wait for
        await kv.put("a", b"1")
        await mirror.current()  # asked as soon as the write was taken: the watch gets there
        assert mirror.entries["a"][0] == b"1"
        assert checks[-1] in {"current", "caught_up"}
        assert mirror._watcher is not None
        await mirror._watcher.stop()  # from here the watch gives nothing, as one whose node died
        await kv.put("b", b"2")
        await kv.put("a", b"3")
        await mirror.current()
        assert checks[-1] == "read"
        assert {key: value for key, (value, _) in mirror.entries.items()} == {"a": b"3", "b": b"2"}
        await kv.delete("a")
        await mirror.current()
        assert checks[-1] == "read" and list(mirror.entries) == ["b"]
        await kv.purge("b")
        await mirror.current()
        assert mirror.entries == {}
        await mirror.current()  # nothing written since: no read
        assert checks[-1] == "current"
    finally:
        await mirror.stop()


async def test_callers_asking_together_share_one_check(nc: Any, nats_config: NatsConfig) -> None:
    kv, mirror, checks = await mirror_of(nc, nats_config)
    try:
        await kv.put("a", b"1")
        await asyncio.gather(*(mirror.current() for _ in range(50)))
        # one began with the first caller; those that came after it began share the next
        assert 1 <= len(checks) <= 2
        assert mirror.entries["a"][0] == b"1"
    finally:
        await mirror.stop()


async def test_only_a_whole_buckets_mirror_can_be_checked(nc: Any, nats_config: NatsConfig) -> None:
    _, mirror, _ = await mirror_of(nc, nats_config, "track.>")
    try:
        with pytest.raises(ValueError, match=r"not track\.>"):
            await mirror.current()
    finally:
        await mirror.stop()
