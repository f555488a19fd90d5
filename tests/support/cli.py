"""``signalfire …`` run as a user runs it: a process of its own, with the environment given."""

from __future__ import annotations

import asyncio
import os
import sys


async def signalfire_cli(*args: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    """Run ``signalfire *args`` with ``env`` over this process's environment; its exit status,
    standard output and standard error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalfire.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
