"""HTTP(S) check: status, latency, body match and days until the TLS certificate expires.

A small HTTP/1.1 client on asyncio streams (one request per connection), so the agent needs
no HTTP library and a check can never block the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from typing import ClassVar
from urllib.parse import urlsplit

from signalfire.collector.checks.base import HttpCheckConfig, Result, outcome, outcome_specs
from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample
from signalfire.regex import compile_regex

#: How much of a response body is read (and searched by ``body_match``).
MAX_BODY = 1 << 20


class HttpCheck:
    kind: ClassVar[str] = "http"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        *outcome_specs("http", "HTTP"),
        MetricSpec("check.http.status_code", ("target",), "code", "HTTP status of the response"),
        MetricSpec(
            "check.http.tls_expiry_days",
            ("target",),
            "days",
            "Days until the server's certificate expires (negative: expired); https only",
        ),
    )

    def __init__(self, config: HttpCheckConfig, default_interval: float) -> None:
        self.config = config
        self.target = config.name or config.url
        self.interval = float(config.interval or default_interval)
        self.timeout = float(config.timeout)
        url = urlsplit(config.url)
        self.tls = url.scheme == "https"
        self.host = url.hostname or ""
        self.port = url.port or (443 if self.tls else 80)
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.host_header = url.netloc.rpartition("@")[2]
        self.body_match = compile_regex(config.body_match) if config.body_match else None
        self._context = self._ssl_context(verify=config.tls_verify) if self.tls else None

    def _ssl_context(self, verify: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.config.tls_ca if verify else None)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def failed(self, result: Result) -> list[Sample]:
        return outcome("http", self.target, result)

    async def run(self) -> list[Sample]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result, status, expiry = await self._probe()
        except TimeoutError:
            return self.failed("timeout")
        latency = (time.perf_counter() - started) * 1000
        samples = outcome("http", self.target, result, latency if status is not None else None)
        labels = {"target": self.target}
        if status is not None:
            samples.append(Sample("check.http.status_code", float(status), labels))
        if expiry is not None:
            samples.append(Sample("check.http.tls_expiry_days", round(expiry, 3), labels))
        return samples

    async def _probe(self) -> tuple[Result, int | None, float | None]:
        """(result, status, days to certificate expiry) of one request."""
        expiry: float | None = None
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._context, server_hostname=self.host if self.tls else None
            )
        except ssl.SSLCertVerificationError:
            # Still tell how long the certificate has (or had): an expired one shows negative days.
            return "tls_error", None, await self._unverified_expiry()
        except ssl.SSLError:
            return "tls_error", None, None
        except OSError:
            return "connection_failed", None, None
        try:
            if self.tls:
                expiry = _expiry_of(writer.get_extra_info("ssl_object"))
            writer.write(self._request())
            await writer.drain()
            status, body = await _read_response(reader, head=self.config.method == "HEAD")
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return "connection_failed", None, expiry
        finally:
            writer.close()
        expected = self.config.expect_status
        if not (status in expected if expected else status < 400):
            return "bad_status", status, expiry
        if self.body_match is not None and not self.body_match.search(body.decode("utf-8", "replace")):
            return "bad_content", status, expiry
        return "ok", status, expiry

    def _request(self) -> bytes:
        body = self.config.body.encode()
        lines = [
            f"{self.config.method} {self.path} HTTP/1.1",
            f"Host: {self.host_header}",
            "User-Agent: signalfire-agent",
            "Accept: */*",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in self.config.headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _unverified_expiry(self) -> float | None:
        try:
            _, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._ssl_context(verify=False), server_hostname=self.host
            )
        except OSError:
            return None
        try:
            return _expiry_of(writer.get_extra_info("ssl_object"))
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader, head: bool) -> tuple[int, bytes]:
    """Status and (up to ``MAX_BODY`` of) the body of an HTTP/1.x response."""
    header_block = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(parts[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head or status in (204, 304) or 100 <= status < 200:
        return status, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, await _read_chunked(reader)
    if (length := headers.get("content-length", "")).isdigit():
        return status, await reader.readexactly(min(int(length), MAX_BODY))
    return status, await reader.read(MAX_BODY)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while len(body) < MAX_BODY:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        body += await reader.readexactly(size)
        await reader.readline()
    return bytes(body[:MAX_BODY])


def _expiry_of(ssl_object: ssl.SSLObject | None) -> float | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        not_after = certificate_not_after(der)
    except (IndexError, ValueError):
        return None
    return (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400


def certificate_not_after(der: bytes) -> dt.datetime:
    """The ``notAfter`` time of a DER X.509 certificate.

    The standard library only decodes certificates it has verified, and an expired or
    self-signed one is exactly what this check must still read: so the few DER fields on
    the way to ``validity`` are walked here.
    """

    def element(at: int) -> tuple[int, int, int]:
        """(tag, start of content, end of content) of the element at ``at``."""
        tag, length = der[at], der[at + 1]
        at += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(der[at : at + count], "big")
            at += count
        return tag, at, at + length

    _, tbs, _ = element(0)  # Certificate ::= SEQUENCE { tbsCertificate, ... }
    _, at, end = element(tbs)  # tbsCertificate ::= SEQUENCE { ... }
    tag, _, end = element(at)
    if tag == 0xA0:  # [0] version, present on v2/v3 certificates
        _, _, end = element(end)  # serialNumber
    _, _, end = element(end)  # signature algorithm
    _, _, end = element(end)  # issuer
    _, validity, _ = element(end)  # validity ::= SEQUENCE { notBefore, notAfter }
    _, _, end = element(validity)  # notBefore
    tag, start, stop = element(end)  # notAfter
    text = der[start:stop].decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        raise ValueError(f"unexpected time tag {tag:#x}")
    return dt.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
