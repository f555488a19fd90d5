"""``serve`` and ``Essentials``: a service whose essential loop ends while it is not stopping is
stopped and its process exits with status 1 (so its supervisor starts it again); loops that
end because the service stops are not failures."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from signalfire.runner import Essentials, ServiceFailed, run_service, serve


class Looping:
    """A service with one essential loop, which runs ``turns`` rounds and then does ``end``:
    ``raise`` (a bug), ``return`` (a loop that gave up) or nothing (it runs until stopped)."""

    def __init__(self, end: str = "", turns: int = 3) -> None:
        self.essentials = Essentials()
        self.end = end
        self.turns = turns
        self.rounds = 0
        #: Set once ``turns`` rounds are done.
        self.turned = asyncio.Event()
        self.stopped = False
        self._stopping = False

    async def start(self) -> None:
        self.essentials.spawn(self._loop(), "demo-loop")

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.01)
            self.rounds += 1
            if self.rounds >= self.turns:
                self.turned.set()
                if self.end == "raise":
                    raise KeyError("the rule nobody foresaw")
                if self.end == "return":
                    return

    async def stop(self) -> None:
        self.essentials.stop()
        self._stopping = True
        await asyncio.sleep(0.05)  # the loop ends now: not a failure
        self.stopped = True


async def test_a_loop_that_raises_stops_the_service_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    service = Looping("raise")
    with pytest.raises(ServiceFailed) as failed:
        await asyncio.wait_for(serve(service), 5)
    assert str(failed.value) == "demo-loop ended: KeyError: 'the rule nobody foresaw'"
    assert service.stopped
    [record] = [r for r in caplog.records if r.name == "signalfire.runner" and r.levelno == logging.ERROR]
    assert record.getMessage() == "an essential task ended; stopping so that the process is started again"
    assert record.exc_info is not None and record.exc_info[0] is KeyError  # the traceback is logged


async def test_a_loop_that_returns_on_its_own_stops_the_service() -> None:
    service = Looping("return")
    with pytest.raises(ServiceFailed, match=r"^demo-loop ended$"):
        await asyncio.wait_for(serve(service), 5)
    assert service.stopped


async def test_loops_that_end_because_the_service_stops_are_no_failure() -> None:
    service = Looping()
    serving = asyncio.create_task(serve(service))
    await asyncio.wait_for(service.turned.wait(), 5)
    os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler takes it
    await asyncio.wait_for(serving, 5)  # returns, raises nothing
    assert service.stopped


def test_the_process_exits_with_status_1_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        await serve(Looping("raise"))

    assert run_service(main) == 1
    assert capsys.readouterr().err == (
        "signalfire: stopped: demo-loop ended: KeyError: 'the rule nobody foresaw'\n"
    )
