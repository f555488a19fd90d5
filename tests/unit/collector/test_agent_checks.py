"""Checks against real local servers: HTTP(S) (good, bad, hanging, huge, expired), TCP, processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest
import trustme

from signalfire.collector.agent import Agent
from signalfire.collector.checks import (
    RESULT_CODES,
    CheckRunner,
    ChecksConfig,
    ProcessCheck,
    TcpCheck,
)
from signalfire.collector.checks.base import HttpCheckConfig, ProcessCheckConfig, TcpCheckConfig
from signalfire.collector.checks.http import MAX_BODY, HttpCheck
from signalfire.collector.collectors import MetricSpec
from signalfire.collector.config import AgentConfig
from signalfire.config import Duration
from signalfire.events import Sample

HANG = threading.Event()


#: `(a+)+$` backtracks ~2^40 steps on it in Python's re; RE2 answers in microseconds.
EVIL_SUBJECT = "a" * 39 + "b"
#: Only after the first MAX_BODY bytes of /endless and /huge: a check never sees it.
LATE_MARKER = b"late-marker"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    #: Connections accepted (TLS handshakes completed, for https).
    connections = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        self.server.connections += 1
        super().setup()

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(b"status: healthy")))
        self.end_headers()

    def do_POST(self) -> None:
        # Echoes the request body, read as its Content-Length says, and its length.
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = b"%d bytes: %s" % (len(body), body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        if self.path == "/hang":
            HANG.wait(30)
            return
        if self.path == "/auth":
            # 200 for user:secret in Basic authentication, 401 otherwise.
            good = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"user:secret").decode()
            self.send_response(200 if good else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/down")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in ("/chunked", "/chunked-split"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            parts = (b"status: ", b"healthy") if self.path == "/chunked" else (b"sta", b"tus: hea", b"lthy")
            for part in parts:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path in ("/endless", "/huge"):
            self.stream_forever(chunked=self.path == "/endless")
            return
        status = 503 if self.path == "/down" else 200
        body = b"status: healthy" if status == 200 else b"status: broken"
        if self.path == "/aaab":  # what `(a+)+$` backtracks exponentially on in Python's re
            body = EVIL_SUBJECT.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stream_forever(self, *, chunked: bool) -> None:
        """``status: healthy``, then filler with LATE_MARKER past the first MAX_BODY bytes,
        until the client goes away: chunked without end, or under a 1 TiB Content-Length."""
        self.send_response(200)
        self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(1 << 40))))
        self.end_headers()
        block = b"x" * 65536
        parts = [b"status: healthy\n", *[block] * (MAX_BODY // len(block)), LATE_MARKER]
        try:
            while not HANG.is_set():
                for part in parts:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                parts = [block]
        except (BrokenPipeError, ConnectionResetError):
            return  # the check read enough and left

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(context: ssl.SSLContext | None = None) -> Iterator[tuple[str, Server]]:
    server = Server(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", server
    finally:
        HANG.set()
        server.shutdown()
        server.server_close()
        HANG.clear()


def in_days(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def tls_context(ca: trustme.CA, not_after: dt.datetime) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 from ``ca`` valid until ``not_after``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost", not_after=not_after).configure_cert(context)
    return context


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with serve() as (url, _):
        yield url


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A private CA: its certificates are trusted only with ``tls_ca``."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def https_url(ca: trustme.CA) -> Iterator[str]:
    with serve(tls_context(ca, in_days(30))) as (url, _):
        yield url


@pytest.fixture(scope="module")
def expired_url(ca: trustme.CA) -> Iterator[str]:
    with serve(tls_context(ca, dt.datetime(2020, 1, 2, tzinfo=dt.UTC))) as (url, _):
        yield url


@pytest.fixture
def silent_address() -> Iterator[str]:
    """host:port of a socket that completes TCP connections (the kernel does) and never
    reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def closed_address() -> str:
    """host:port where nothing listens (a port the kernel just handed out and got back)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def values(samples: list[Sample]) -> dict[str, float]:
    return {s.name.rpartition(".")[2]: s.value for s in samples}


async def http(url: str, **fields: Any) -> dict[str, float]:
    check = HttpCheck(HttpCheckConfig(url=url, **fields), 1.0)
    try:
        samples = await check.run()
    finally:
        await check.close()
    assert all(s.labels == {"target": fields.get("name", url)} for s in samples)
    declared = {spec.name for spec in HttpCheck.METRICS}
    assert {s.name for s in samples} <= declared
    return values(samples)


async def test_http_ok_with_status_latency_and_body_match(http_url: str) -> None:
    result = await http(f"{http_url}/health", body_match="status: heal")
    assert result["up"] == 1 and result["result_code"] == RESULT_CODES["ok"]
    assert result["status_code"] == 200 and result["latency_ms"] > 0
    assert "tls_expiry_days" not in result
    assert (await http(f"{http_url}/chunked", body_match="healthy$"))["result_code"] == 0
    head = await http(f"{http_url}/health", method="HEAD", body_match="^$")
    assert (head["result_code"], head["status_code"]) == (0, 200)  # no body awaited after a HEAD


async def test_a_chunked_body_is_matched_across_its_chunks(http_url: str) -> None:
    # "sta" + "tus: hea" + "lthy": the match spans three chunks, and no framing is left in.
    split = await http(f"{http_url}/chunked-split", body_match="^status: healthy$")
    assert (split["up"], split["result_code"], split["status_code"]) == (1, 0, 200)
    wrong = await http(f"{http_url}/chunked-split", body_match="unhealthy")
    assert (wrong["up"], wrong["result_code"]) == (0, RESULT_CODES["bad_content"])


@pytest.mark.parametrize("path", ["/endless", "/huge"])
async def test_a_body_larger_than_max_body_is_read_up_to_max_body_only(http_url: str, path: str) -> None:
    # A chunked body without end, and one announced as 1 TiB: reading them whole would never
    # finish (a timeout) or exhaust memory. The first MAX_BODY bytes are matched, no more.
    head = await http(f"{http_url}{path}", body_match="^status: healthy", timeout=Duration(10))
    assert (head["up"], head["result_code"], head["status_code"]) == (1, 0, 200)
    late = await http(f"{http_url}{path}", body_match=LATE_MARKER.decode(), timeout=Duration(10))
    assert (late["up"], late["result_code"]) == (0, RESULT_CODES["bad_content"])


async def test_http_bad_status_and_bad_content(http_url: str) -> None:
    down = await http(f"{http_url}/down", name="api")
    assert (down["up"], down["result_code"], down["status_code"]) == (0, RESULT_CODES["bad_status"], 503)
    expected = await http(f"{http_url}/down", expect_status=[503])
    assert expected["result_code"] == 0
    wrong = await http(f"{http_url}/health", body_match="^ready$")
    assert (wrong["up"], wrong["result_code"]) == (0, RESULT_CODES["bad_content"])


async def test_redirects_are_reported_not_followed(http_url: str) -> None:
    # /redirect points at /down (503): following it would make the check fail.
    redirect = await http(f"{http_url}/redirect")
    assert (redirect["up"], redirect["result_code"], redirect["status_code"]) == (1, 0, 302)
    strict = await http(f"{http_url}/redirect", expect_status=[200])
    assert (strict["up"], strict["status_code"]) == (0, 302)
    assert strict["result_code"] == RESULT_CODES["bad_status"]


async def test_user_and_password_in_the_url_are_sent_as_basic_authentication(http_url: str) -> None:
    with_user = await http(http_url.replace("://", "://user:secret@") + "/auth")
    assert (with_user["up"], with_user["status_code"]) == (1, 200)
    assert (await http(f"{http_url}/auth"))["status_code"] == 401


async def test_a_catastrophic_body_match_answers_at_once(http_url: str) -> None:
    result = await http(f"{http_url}/aaab", body_match="(a+)+$")
    assert (result["up"], result["result_code"]) == (0, RESULT_CODES["bad_content"])
    assert (await http(f"{http_url}/aaab", body_match="a+b$"))["result_code"] == 0


async def test_a_configured_body_is_sent_with_its_length(http_url: str) -> None:
    sent = await http(
        f"{http_url}/echo", method="POST", body='{"ping": 1}', body_match=r'^11 bytes: \{"ping": 1\}$'
    )
    assert (sent["up"], sent["result_code"], sent["status_code"]) == (1, 0, 200)
    empty = await http(f"{http_url}/echo", method="POST", body_match="^0 bytes: $")
    assert (empty["up"], empty["result_code"]) == (1, 0)


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstatus: healthy",  # cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nstatus\r\n",  # bad chunk
    ],
    ids=["not-http", "truncated", "bad-chunk"],
)
async def test_a_response_that_is_not_well_framed_http_is_connection_failed(answer: bytes) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await http(f"http://127.0.0.1:{port}/health", body_match="healthy")
    finally:
        server.close()
        await server.wait_closed()
    assert (result["up"], result["result_code"]) == (0, RESULT_CODES["connection_failed"])
    assert "status_code" not in result


async def test_http_connection_failed_and_timeout(http_url: str) -> None:
    closed = await http("http://127.0.0.1:9/")
    assert (closed["up"], closed["result_code"]) == (0, RESULT_CODES["connection_failed"])
    hanging = await http(f"{http_url}/hang", timeout=Duration(0.3))
    assert (hanging["up"], hanging["result_code"]) == (0, RESULT_CODES["timeout"])


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_connection_refused_is_connection_failed(scheme: str, closed_address: str) -> None:
    refused = await http(f"{scheme}://{closed_address}/health")
    assert (refused["up"], refused["result_code"]) == (0, RESULT_CODES["connection_failed"])
    assert "status_code" not in refused and "latency_ms" not in refused


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_server_that_accepts_and_never_answers_times_out(scheme: str, silent_address: str) -> None:
    started = time.monotonic()
    silent = await http(f"{scheme}://{silent_address}/health", timeout=Duration(0.5))
    assert (silent["up"], silent["result_code"]) == (0, RESULT_CODES["timeout"])
    assert "status_code" not in silent
    assert time.monotonic() - started < 5  # its own timeout, not the runner's last resort


async def test_https_self_signed_reports_days_to_expiry(https_url: str, ca_file: str) -> None:
    untrusted = await http(f"{https_url}/health")
    assert untrusted["result_code"] == RESULT_CODES["tls_error"]
    assert 29 < untrusted["tls_expiry_days"] <= 30  # still read, so an operator sees it
    unverified = await http(f"{https_url}/health", tls_verify=False)
    assert unverified["result_code"] == 0 and 29 < unverified["tls_expiry_days"] <= 30
    trusted = await http(f"{https_url}/health", tls_ca=ca_file)
    assert trusted["result_code"] == 0 and trusted["status_code"] == 200


async def test_https_expired_certificate_has_negative_days(expired_url: str, ca_file: str) -> None:
    days = (dt.datetime(2020, 1, 2, tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    verified = await http(f"{expired_url}/health", tls_ca=ca_file)
    assert verified["result_code"] == RESULT_CODES["tls_error"]
    assert verified["tls_expiry_days"] == pytest.approx(days, abs=0.01)
    unverified = await http(f"{expired_url}/health", tls_verify=False)
    assert unverified["result_code"] == 0 and unverified["tls_expiry_days"] == pytest.approx(days, abs=0.01)


async def test_a_soon_expiring_certificate_is_up_with_its_days_left(ca: trustme.CA, ca_file: str) -> None:
    with serve(tls_context(ca, in_days(0.25))) as (url, _):
        soon = await http(f"{url}/health", tls_ca=ca_file, body_match="healthy")
        assert (soon["up"], soon["result_code"], soon["status_code"]) == (1, 0, 200)
        assert soon["tls_expiry_days"] == pytest.approx(0.25, abs=0.01)


async def test_https_on_a_plain_http_port_is_a_tls_error(http_url: str) -> None:
    result = await http(http_url.replace("http://", "https://") + "/health")
    assert (result["up"], result["result_code"]) == (0, RESULT_CODES["tls_error"])
    assert "tls_expiry_days" not in result


async def test_every_run_connects_afresh_and_reads_the_current_certificate(
    ca: trustme.CA, ca_file: str
) -> None:
    # One client per check, but no connection kept between runs: the latency includes the
    # handshake, and a renewed certificate shows at the next run.
    context = tls_context(ca, in_days(30))
    with serve(context) as (url, server):
        check = HttpCheck(HttpCheckConfig(url=f"{url}/health", tls_ca=ca_file), 1.0)
        try:
            first = values(await check.run())
            ca.issue_cert("127.0.0.1", not_after=in_days(90)).configure_cert(context)
            second = values(await check.run())
        finally:
            await check.close()
        assert (first["result_code"], second["result_code"]) == (0, 0)
        assert first["tls_expiry_days"] == pytest.approx(30, abs=0.01)
        assert second["tls_expiry_days"] == pytest.approx(90, abs=0.01)
        assert server.connections == 2


def test_an_agent_without_http_checks_does_not_load_h11() -> None:
    # What an HTTP check costs in memory is paid by agents that have one only; httpx (a
    # development dependency here) is loaded by none, cryptography only to read a
    # certificate the check did not verify.
    code = (
        "import sys\n"
        "from signalfire.collector.agent import Agent\n"
        "from signalfire.collector.checks import ChecksConfig\n"
        "from signalfire.collector.checks.base import HttpCheckConfig, TcpCheckConfig\n"
        "from signalfire.collector.config import AgentConfig\n"
        "loaded = lambda: sorted({'h11', 'httpx', 'cryptography'} & set(sys.modules))\n"
        "Agent(AgentConfig(checks=ChecksConfig(tcp=[TcpCheckConfig(address='127.0.0.1:9')])))\n"
        "print(loaded())\n"
        "Agent(AgentConfig(checks=ChecksConfig(http=[HttpCheckConfig(url='https://127.0.0.1:9/')])))\n"
        "print(loaded())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["[]", "['h11']"]


async def test_tcp_check_open_and_closed_ports() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        up = values(await TcpCheck(TcpCheckConfig(address=f"127.0.0.1:{port}", name="db"), 1.0).run())
    finally:
        server.close()
        await server.wait_closed()
    assert up["up"] == 1 and up["result_code"] == 0 and up["latency_ms"] >= 0
    down = values(await TcpCheck(TcpCheckConfig(address=f"127.0.0.1:{port}"), 1.0).run())
    assert (down["up"], down["result_code"]) == (0, RESULT_CODES["connection_failed"])


async def test_process_check_by_name_and_command_line(tmp_path: Path) -> None:
    # A name of its own: other `sleep` processes may run on the host meanwhile.
    name = f"sf-sleep-{os.getpid() % 10000:04d}"
    (tmp_path / name).symlink_to(shutil.which("sleep") or "/bin/sleep")
    children = [subprocess.Popen([str(tmp_path / name), "30"]) for _ in range(2)]  # noqa: ASYNC220
    try:
        by_name = ProcessCheck(ProcessCheckConfig(name=name, min_count=2), 1.0)
        first = values(await by_name.run())
        assert (first["up"], first["count"]) == (1, 2)
        assert first["rss_bytes"] > 0 and "cpu_percent" not in first  # CPU needs two readings
        second = values(await by_name.run())
        assert 0 <= second["cpu_percent"] < 50  # sleeping processes
        by_cmdline = ProcessCheck(ProcessCheckConfig(name="sleepers", cmdline=rf"/{name} 30$"), 1.0)
        assert values(await by_cmdline.run())["count"] == 2
    finally:
        for child in children:
            child.kill()
            child.wait()
    missing = values(await ProcessCheck(ProcessCheckConfig(name="no-such-daemon-sf"), 1.0).run())
    assert (missing["up"], missing["count"], missing["rss_bytes"]) == (0, 0, 0)


async def test_a_zombie_process_is_not_up(tmp_path: Path) -> None:
    name = f"sf-zombie-{os.getpid() % 10000:04d}"
    (tmp_path / name).symlink_to(shutil.which("true") or "/bin/true")
    child = subprocess.Popen([str(tmp_path / name)])  # noqa: ASYNC220
    try:
        # It exits at once; until it is reaped (child.wait) it is a zombie under its name.
        deadline = time.monotonic() + 20
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child never became a zombie"
            await asyncio.sleep(0.01)
        assert psutil.Process(child.pid).name() == name
        found = values(await ProcessCheck(ProcessCheckConfig(name=name), 1.0).run())
        assert (found["up"], found["count"], found["rss_bytes"]) == (0, 0, 0)
    finally:
        child.wait()


async def test_a_catastrophic_cmdline_pattern_answers_at_once() -> None:
    # The command line of every process is searched: one ending in `aaaa…ab` is enough.
    child = subprocess.Popen(  # noqa: ASYNC220
        [shutil.which("python3") or "python3", "-c", "import time; time.sleep(30)", EVIL_SUBJECT]
    )
    try:
        check = ProcessCheck(ProcessCheckConfig(name="evil", cmdline="(a+)+$"), 1.0)
        assert values(await check.run())["count"] == 0
        found = ProcessCheck(ProcessCheckConfig(name="evil", cmdline=f"{EVIL_SUBJECT}$"), 1.0)
        assert values(await found.run())["count"] == 1
    finally:
        child.kill()
        child.wait()


async def test_a_hanging_check_never_delays_the_batch(http_url: str) -> None:
    config = AgentConfig(
        interval=Duration(1),
        checks=ChecksConfig(
            http=[
                HttpCheckConfig(url=f"{http_url}/hang", name="hanging", timeout=Duration(30)),
                HttpCheckConfig(url=f"{http_url}/health", name="healthy", interval=Duration(0.2)),
            ]
        ),
    )
    agent = Agent(config)
    agent.checks.start()
    try:
        await asyncio.sleep(0.5)
        started = time.monotonic()
        batch = await agent.collect_batch()
        assert time.monotonic() - started < 30  # returned while the hanging check still runs
    finally:
        await agent.checks.stop()
    targets = {s.labels.get("target") for s in batch.samples if s.name.startswith("check.http.")}
    assert targets == {"healthy"}  # the latest completed results; none yet from the hanging one


async def test_the_runner_times_out_a_check_that_ignores_its_own_timeout() -> None:
    class Stuck:
        kind: ClassVar[str] = "tcp"
        METRICS: ClassVar[tuple[MetricSpec, ...]] = TcpCheck.METRICS

        def __init__(self) -> None:
            self.target, self.interval, self.timeout = "stuck", 1.0, 0.1

        async def run(self) -> list[Sample]:
            await asyncio.sleep(60)
            return []

        async def close(self) -> None:
            pass

        def failed(self, result: Any) -> list[Sample]:
            return TcpCheck(TcpCheckConfig(address="x:1", name="stuck"), 1.0).failed(result)

    [up, code] = await CheckRunner([Stuck()]).run_once()
    assert (up.value, code.value) == (0, RESULT_CODES["timeout"])


async def test_a_stop_that_arrives_as_a_check_completes_still_stops_the_runner() -> None:
    # The stop lands between the end of a run and the runner taking its result: lost there,
    # the runner would probe on and the agent would never exit on SIGTERM.
    stopping: list[asyncio.Task[None]] = []
    stop_requested = asyncio.Event()

    class StopsTheRunner:
        kind: ClassVar[str] = "tcp"
        METRICS: ClassVar[tuple[MetricSpec, ...]] = TcpCheck.METRICS

        def __init__(self) -> None:
            self.target, self.interval, self.timeout = "stopper", 0.2, 1.0
            self.runs = 0

        async def run(self) -> list[Sample]:
            self.runs += 1
            if self.runs > 1:
                # Run again: the stop was lost. Ending the task here keeps the test from hanging.
                raise asyncio.CancelledError
            stopping.append(asyncio.create_task(runner.stop()))
            stop_requested.set()
            return self.failed("ok")

        async def close(self) -> None:
            pass

        def failed(self, result: Any) -> list[Sample]:
            return TcpCheck(TcpCheckConfig(address="x:1", name="stopper"), 1.0).failed(result)

    check = StopsTheRunner()
    runner = CheckRunner([check])
    runner.start()
    await asyncio.wait_for(stop_requested.wait(), 5)
    await asyncio.wait_for(stopping[0], 5)
    assert check.runs == 1  # no probe after the stop


def test_checks_config_from_yaml(tmp_path: Path) -> None:
    from signalfire.config import load_config

    path = tmp_path / "agent.yaml"
    path.write_text(
        "interval: 1s\nchecks:\n  http:\n"
        "    - {url: 'http://127.0.0.1:1/', name: api, timeout: 2s, interval: 10s}\n"
    )
    agent = Agent(load_config(AgentConfig, path, environ={}))
    [check] = agent.checks.checks
    assert (check.target, check.interval, check.timeout) == ("api", 10.0, 2.0)
