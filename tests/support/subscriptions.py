"""What a test hears on the bus: every message of a subject, decoded, as it arrives."""

from __future__ import annotations

from typing import Any, TypeVar

from msgspec import Struct

from signalfire.events import decode

T = TypeVar("T", bound=Struct)


async def collect(nc: Any, subject: str, kind: type[T]) -> list[T]:
    """Subscribe ``nc`` to ``subject`` (wildcards allowed); the list returned fills with each
    message decoded as ``kind``, in order of arrival, for as long as ``nc`` is connected."""
    received: list[T] = []

    async def on_message(msg: Any) -> None:
        received.append(decode(msg.data, kind))

    await nc.subscribe(subject, cb=on_message)
    return received
