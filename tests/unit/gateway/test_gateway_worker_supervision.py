"""Ingest worker supervision: unreadable reports, workers that will not stop, a worker given no
configuration."""

from __future__ import annotations

import asyncio
import io
import logging
import sys

import pytest

from signalfire.config import load_config
from signalfire.gateway import worker as worker_module
from signalfire.gateway import workers as workers_module
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.workers import IngestWorkers, _Worker
from signalfire.telemetry import Registry

PAGE = (
    b"# HELP sf_ingest_messages Messages\n# TYPE sf_ingest_messages counter\nsf_ingest_messages_total 7.0\n"
)


def _report(page: bytes) -> bytes:
    return b"%d\n" % len(page) + page


def _supervisor(count: int = 1) -> IngestWorkers:
    return IngestWorkers(load_config(GatewayConfig, None, environ={}), count, Registry("sf"))


async def _read(data: bytes) -> tuple[_Worker, asyncio.StreamReader]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    worker = _Worker(1)
    await asyncio.wait_for(IngestWorkers._read_reports(worker, reader), timeout=5)
    return worker, reader


async def test_a_good_report_is_shown_with_the_workers_label() -> None:
    supervisor = _supervisor()
    worker, _ = await _read(_report(PAGE))
    assert worker.ingesting
    supervisor.workers[0].families = worker.families
    samples = [s for f in supervisor.families() for s in f.samples]
    labelled = [(s.name, s.labels, s.value) for s in samples]
    assert labelled == [("sf_ingest_messages_total", {"worker": "1"}, 7.0)]


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"not a length\n" + b"x" * 200_000, id="length-not-a-number"),
        pytest.param(b"500\n" + b"y" * 10, id="page-cut-short"),
        pytest.param(b"20\n" + b"\xff" * 20, id="page-not-utf8"),
    ],
)
async def test_an_unreadable_report_keeps_the_last_page_is_logged_and_the_pipe_is_drained(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="signalfire.gateway.workers"):
        worker, reader = await _read(_report(PAGE) + garbage)
    # The page read before the bad report still stands; nothing after it is taken as metrics.
    assert worker.ingesting
    assert [s.value for f in worker.families for s in f.samples] == [7.0]
    # Drained to its end: a worker blocked on a full pipe would stop ingesting.
    assert reader.at_eof()
    [record] = [r for r in caplog.records if r.getMessage().startswith("unreadable report")]
    assert record.__dict__["worker"] == 1 and record.__dict__["reason"]


async def test_wait_ready_says_no_when_workers_never_report() -> None:
    supervisor = _supervisor(2)
    assert await supervisor.wait_ready(0.1) is False
    assert supervisor.running() == 0


IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workers_module, "STOP_TIMEOUT", 0.3)
    supervisor = _supervisor()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IGNORES_SIGTERM, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), timeout=10) == b"ready\n"
        supervisor.workers[0].process = process
        with caplog.at_level(logging.WARNING, logger="signalfire.gateway.workers"):
            await asyncio.wait_for(supervisor.stop(), timeout=10)
        assert process.returncode == -9  # SIGKILL: it outlived its SIGTERM
        assert any("did not stop in time" in r.getMessage() for r in caplog.records)
        assert supervisor.pids() == []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("line", "named"),
    [
        pytest.param(b"", "no configuration on stdin", id="empty"),
        pytest.param(b"{not json\n", "no configuration on stdin", id="not-json"),
        pytest.param(b'{"ingest_workers": "many"}\n', "ingest_workers", id="bad-field"),
    ],
)
def test_a_worker_without_a_readable_configuration_exits_2_naming_why(
    line: bytes, named: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line)))
    assert worker_module.main(["--index", "1"]) == 2
    err = capsys.readouterr().err
    assert "signalfire gateway worker: no configuration on stdin" in err
    assert named in err


async def test_a_worker_that_cannot_be_started_again_is_logged_retried_and_stop_ends_the_waiting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = _supervisor()
    worker = supervisor.workers[0]
    worker.process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "pass", stdout=asyncio.subprocess.PIPE
    )
    # The interpreter is gone (a package upgrade under the running gateway): starting fails.
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with caplog.at_level(logging.WARNING, logger="signalfire.gateway.workers"):
        task = asyncio.create_task(supervisor._supervise(worker))
        supervisor._tasks.append(task)
        for _ in range(100):  # the first restart comes after the 1 s back-off
            if any(r.getMessage() == "cannot start an ingest worker" for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        [record] = [r for r in caplog.records if r.getMessage() == "cannot start an ingest worker"]
        assert record.__dict__["worker"] == 1 and "nonexistent" in record.__dict__["reason"]
        assert not task.done()  # still supervising: it tries again after the next back-off
        await asyncio.wait_for(supervisor.stop(), timeout=5)  # ends the back-off wait at once
    assert task.done() and task.exception() is None
    assert worker.restarts == 0
    assert supervisor.running() == 0
