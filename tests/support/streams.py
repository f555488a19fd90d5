"""What a JetStream stream holds, read back message by message."""

from __future__ import annotations

from typing import Any


async def stream_messages(js: Any, stream: str, subject_prefix: str = "") -> list[tuple[str, bytes]]:
    """Every message of ``stream`` whose subject starts with ``subject_prefix``, oldest first."""
    return [(msg.subject, msg.data or b"") for msg in await stream_records(js, stream, subject_prefix)]


async def stream_records(js: Any, stream: str, subject_prefix: str = "") -> list[Any]:
    """The same as nats-py's ``RawStreamMsg`` (``subject``, ``data``, ``time``: when the stream
    stored it, the server's clock)."""
    state = (await js.stream_info(stream)).state
    found: list[Any] = []
    if state.messages == 0:
        return found
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except Exception:  # deleted or discarded
            continue
        if msg.subject.startswith(subject_prefix):
            found.append(msg)
    return found
