"""What a JetStream stream holds, read back message by message."""

from __future__ import annotations

from typing import Any


async def stream_messages(js: Any, stream: str, subject_prefix: str = "") -> list[tuple[str, bytes]]:
    """Every message of ``stream`` whose subject starts with ``subject_prefix``, oldest first."""
    state = (await js.stream_info(stream)).state
    found: list[tuple[str, bytes]] = []
    if state.messages == 0:
        return found
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except Exception:  # deleted or discarded
            continue
        if msg.subject.startswith(subject_prefix):
            found.append((msg.subject, msg.data or b""))
    return found
