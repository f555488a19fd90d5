"""HTTP(S) check: status, latency, body match and days until the TLS certificate expires.

One HTTP/1.1 request per connection, on asyncio streams, with h11 (the sans-I/O protocol
library httpx itself uses) writing the request and parsing the response: status line,
headers, Content-Length and chunked framing, and their errors. This module is imported only
by agents that have an HTTP check (docs/benchmarks.md has what it costs).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import time
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

import h11

from signalfire.collector.checks.base import HttpCheckConfig, Result, outcome, outcome_specs
from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample
from signalfire.regex import compile_regex

#: How much of a response body is read (and searched by ``body_match``); the rest is never
#: read into memory, however large the response.
MAX_BODY = 1 << 20

#: Sent with every request; configured ``headers`` override them. ``identity`` asks for a
#: body ``body_match`` can read; whatever comes is read raw, never decompressed, so a small
#: compressed response cannot inflate in memory either.
DEFAULT_HEADERS = {
    "User-Agent": "signalfire-agent",
    "Accept": "*/*",
    "Accept-Encoding": "identity",
    "Connection": "close",
}

#: Bytes asked of the socket at a time.
READ_SIZE = 1 << 16
#: The largest status line and header block accepted, as httpx (httpcore) accepts; h11's own
#: default is 16 KiB.
MAX_HEAD = 100 * 1024
#: What a request target may keep unquoted: RFC 3986's reserved and unreserved characters
#: and ``%`` (a URL's own escapes stay as written); spaces and the like are escaped, as httpx
#: does, rather than refused by h11.
TARGET_SAFE = "/?#[]@!$&'()*+,;=:%-._~"


class HttpCheck:
    """One endpoint probed every ``interval``. Nothing is kept between runs: every probe
    connects afresh, so the latency includes connecting and the TLS handshake, and the
    certificate read is the one the server presents now. Redirects are not followed: a 3xx
    is the answer (up unless ``expect_status`` says otherwise), as a health endpoint that
    starts redirecting is worth seeing."""

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
        self.path = quote((url.path or "/") + (f"?{url.query}" if url.query else ""), safe=TARGET_SAFE)
        self.body = config.body.encode()
        # A name outside ASCII is sent as its IDNA form, as httpx does; the resolver takes either.
        host = self.host if self.host.isascii() else self.host.encode("idna").decode()
        host = f"[{host}]" if ":" in host else host
        if url.port not in (None, 443 if self.tls else 80):
            host += f":{url.port}"
        # By lower-case name, so a configured header replaces a default whatever its case.
        headers = {"host": ("Host", host)}
        headers |= {name.lower(): (name, value) for name, value in DEFAULT_HEADERS.items()}
        headers |= {name.lower(): (name, value) for name, value in config.headers.items()}
        if self.body or config.method in ("POST", "PUT"):
            headers["content-length"] = ("Content-Length", str(len(self.body)))
        if url.username is not None or url.password is not None:
            # user:password in the URL, as httpx sends it (and over a configured header).
            userinfo = f"{unquote(url.username or '')}:{unquote(url.password or '')}".encode()
            headers["authorization"] = ("Authorization", "Basic " + base64.b64encode(userinfo).decode())
        self.headers = list(headers.values())
        self.body_match = compile_regex(config.body_match) if config.body_match else None
        self._context: ssl.SSLContext | None = None

    def _ssl_context(self, verify: bool) -> ssl.SSLContext:
        # The host's trust store plus tls_ca, which operators manage on their hosts. Made at
        # the first probe, so an unreadable tls_ca fails this check's runs (logged), not the
        # agent's start.
        context = ssl.create_default_context(cafile=self.config.tls_ca if verify else None)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def close(self) -> None:
        """Nothing is kept between runs."""

    def failed(self, result: Result) -> list[Sample]:
        return outcome("http", self.target, result)

    async def run(self) -> list[Sample]:
        started = time.perf_counter()
        # `timeout` bounds the whole probe: connecting, the handshake, writing and reading.
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
        if self.tls and self._context is None:
            self._context = self._ssl_context(self.config.tls_verify)
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._context, server_hostname=self.host if self.tls else None
            )
        except ssl.SSLCertVerificationError:
            # The failed handshake leaves no certificate to read: tell how long it has (or
            # had) from a second, unverified one, so an expired one shows negative days.
            return "tls_error", None, await self._unverified_expiry()
        except ssl.SSLError:
            return "tls_error", None, None
        except OSError:
            return "connection_failed", None, None
        try:
            if self.tls:
                expiry = _expiry_of(writer.get_extra_info("ssl_object"))
            status, body = await self._exchange(reader, writer)
        except (OSError, h11.ProtocolError):
            return "connection_failed", None, expiry
        finally:
            writer.close()
        expected = self.config.expect_status
        if not (status in expected if expected else status < 400):
            return "bad_status", status, expiry
        if self.body_match is not None and not self.body_match.search(body.decode("utf-8", "replace")):
            return "bad_content", status, expiry
        return "ok", status, expiry

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes]:
        """Send the request; the response's status and up to ``MAX_BODY`` of its body as sent
        (chunked framing removed). What follows is never read."""
        connection = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        request = h11.Request(method=self.config.method, target=self.path, headers=self.headers)
        writer.write(connection.send(request) or b"")
        if self.body:
            writer.write(connection.send(h11.Data(data=self.body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        status: int | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(READ_SIZE))  # b"": the server closed
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data[: MAX_BODY - len(body)]
                if len(body) >= MAX_BODY:
                    break
            elif not isinstance(event, h11.InformationalResponse):  # 1xx: the response follows
                break  # EndOfMessage, or the connection closed where h11 says that ends the body
        if status is None:  # closed before a response, which h11 reports as an error anyway
            raise h11.RemoteProtocolError("no response")
        return status, bytes(body)

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


def _expiry_of(ssl_object: Any) -> float | None:
    """Days until the peer certificate of ``ssl_object`` (an ``ssl.SSLObject`` or
    ``SSLSocket``) expires."""
    if ssl_object is None:
        return None
    # The standard library decodes a certificate it verified; one it did not (tls_verify
    # false, or the check's second handshake) is read from its DER form with cryptography,
    # imported only then: it costs an agent some 8 MB (docs/benchmarks.md).
    not_after = ssl_object.getpeercert().get("notAfter")
    if not_after:
        return (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    try:
        expires = x509.load_der_x509_certificate(der).not_valid_after_utc
    except ValueError:
        return None
    return (expires - dt.datetime.now(dt.UTC)).total_seconds() / 86400
