"""Checks against real local servers: HTTP(S) (good, bad, hanging, expired), TCP, processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from signalfire.collector.agent import Agent
from signalfire.collector.checks import (
    RESULT_CODES,
    CheckRunner,
    ChecksConfig,
    HttpCheck,
    ProcessCheck,
    TcpCheck,
)
from signalfire.collector.checks.base import HttpCheckConfig, ProcessCheckConfig, TcpCheckConfig
from signalfire.collector.checks.http import certificate_not_after
from signalfire.collector.collectors import MetricSpec
from signalfire.collector.config import AgentConfig
from signalfire.config import Duration
from signalfire.events import Sample

HANG = threading.Event()


#: `(a+)+$` backtracks ~2^40 steps on it in Python's re; RE2 answers in microseconds.
EVIL_SUBJECT = "a" * 39 + "b"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/hang":
            HANG.wait(30)
            return
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"status: ", b"healthy"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        status = 503 if self.path == "/down" else 200
        body = b"status: healthy" if status == 200 else b"status: broken"
        if self.path == "/aaab":  # what `(a+)+$` backtracks exponentially on in Python's re
            body = EVIL_SUBJECT.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(context: ssl.SSLContext | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        HANG.set()
        server.shutdown()
        server.server_close()
        HANG.clear()


def make_certificate(directory: Path, *, expired: bool) -> tuple[Path, Path]:
    """A self-signed certificate for localhost made with the openssl command line: valid
    for 30 days, or one that expired in 2020 (``openssl ca`` is what sets past dates)."""
    directory.mkdir()
    key, cert = directory / "key.pem", directory / "cert.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    if not expired:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                key,
                "-out",
                cert,
                "-days",
                "30",
                *subject,
            ],
            cwd=directory,
            check=True,
            capture_output=True,
        )
        return key, cert
    (directory / "ca.cnf").write_text(
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\n"
        "default_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n"
    )
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("01\n")
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            "r.csr",
            *subject[:2],
        ],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            key,
            "-in",
            "r.csr",
            "-out",
            cert,
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-notext",
        ],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    return key, cert


def tls_context(key: Path, cert: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    yield from serve()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("certs")
    return {
        "valid": make_certificate(base / "valid", expired=False),
        "expired": make_certificate(base / "expired", expired=True),
    }


@pytest.fixture(scope="module")
def https_url(certificates: dict[str, tuple[Path, Path]]) -> Iterator[str]:
    yield from serve(tls_context(*certificates["valid"]))


@pytest.fixture(scope="module")
def expired_url(certificates: dict[str, tuple[Path, Path]]) -> Iterator[str]:
    yield from serve(tls_context(*certificates["expired"]))


def values(samples: list[Sample]) -> dict[str, float]:
    return {s.name.rpartition(".")[2]: s.value for s in samples}


async def http(url: str, **fields: Any) -> dict[str, float]:
    check = HttpCheck(HttpCheckConfig(url=url, **fields), 1.0)
    samples = await check.run()
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


async def test_http_bad_status_and_bad_content(http_url: str) -> None:
    down = await http(f"{http_url}/down", name="api")
    assert (down["up"], down["result_code"], down["status_code"]) == (0, RESULT_CODES["bad_status"], 503)
    expected = await http(f"{http_url}/down", expect_status=[503])
    assert expected["result_code"] == 0
    wrong = await http(f"{http_url}/health", body_match="^ready$")
    assert (wrong["up"], wrong["result_code"]) == (0, RESULT_CODES["bad_content"])


async def test_a_catastrophic_body_match_answers_at_once(http_url: str) -> None:
    result = await http(f"{http_url}/aaab", body_match="(a+)+$")
    assert (result["up"], result["result_code"]) == (0, RESULT_CODES["bad_content"])
    assert (await http(f"{http_url}/aaab", body_match="a+b$"))["result_code"] == 0


async def test_http_connection_failed_and_timeout(http_url: str) -> None:
    closed = await http("http://127.0.0.1:9/")
    assert (closed["up"], closed["result_code"]) == (0, RESULT_CODES["connection_failed"])
    hanging = await http(f"{http_url}/hang", timeout=Duration(0.3))
    assert (hanging["up"], hanging["result_code"]) == (0, RESULT_CODES["timeout"])


async def test_https_self_signed_reports_days_to_expiry(https_url: str, certificates: Any) -> None:
    untrusted = await http(f"{https_url}/health")
    assert untrusted["result_code"] == RESULT_CODES["tls_error"]
    assert 29 < untrusted["tls_expiry_days"] <= 30  # still read, so an operator sees it
    unverified = await http(f"{https_url}/health", tls_verify=False)
    assert unverified["result_code"] == 0 and 29 < unverified["tls_expiry_days"] <= 30
    trusted = await http(f"{https_url}/health", tls_ca=str(certificates["valid"][1]))
    assert trusted["result_code"] == 0 and trusted["status_code"] == 200


async def test_https_expired_certificate_has_negative_days(expired_url: str, certificates: Any) -> None:
    days = (dt.datetime(2020, 1, 2, tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    verified = await http(f"{expired_url}/health", tls_ca=str(certificates["expired"][1]))
    assert verified["result_code"] == RESULT_CODES["tls_error"]
    assert verified["tls_expiry_days"] == pytest.approx(days, abs=0.01)
    unverified = await http(f"{expired_url}/health", tls_verify=False)
    assert unverified["result_code"] == 0 and unverified["tls_expiry_days"] < 0


def test_certificate_not_after_reads_the_der(certificates: dict[str, tuple[Path, Path]]) -> None:
    der = ssl.PEM_cert_to_DER_cert(certificates["expired"][1].read_text())
    assert certificate_not_after(der) == dt.datetime(2020, 1, 2, tzinfo=dt.UTC)


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

        def failed(self, result: Any) -> list[Sample]:
            return TcpCheck(TcpCheckConfig(address="x:1", name="stuck"), 1.0).failed(result)

    [up, code] = await CheckRunner([Stuck()]).run_once()
    assert (up.value, code.value) == (0, RESULT_CODES["timeout"])


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
