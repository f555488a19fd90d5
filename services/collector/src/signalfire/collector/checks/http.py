"""HTTP(S) check: status, latency, body match and days until the TLS certificate expires.

Requests go through httpx. This module is imported only by agents that have an HTTP
check, so an agent without one does not carry httpx in memory (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from typing import Any, ClassVar

import httpx

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


class HttpCheck:
    """One endpoint probed every ``interval``. The httpx client lives as long as the check
    (made on the first run, closed by :meth:`close`), but keeps no connection between runs:
    every probe connects afresh, so the latency includes connecting and the TLS handshake,
    and the certificate read is the one the server presents now, not a renewed one's
    predecessor kept alive in a pool."""

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
        self.url = httpx.URL(config.url)
        self.tls = self.url.scheme == "https"
        self.headers = httpx.Headers(DEFAULT_HEADERS)
        self.headers.update(config.headers)  # by name, whatever its case
        self.body_match = compile_regex(config.body_match) if config.body_match else None
        self._client: httpx.AsyncClient | None = None

    def _ssl_context(self, verify: bool) -> ssl.SSLContext:
        # The host's trust store plus tls_ca, which operators manage on their hosts, rather
        # than the certifi bundle httpx would load by default.
        context = ssl.create_default_context(cafile=self.config.tls_ca if verify else None)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self._ssl_context(self.config.tls_verify) if self.tls else False,
            timeout=self.timeout,
            # Redirects are not followed: a 3xx is the answer (up unless expect_status says
            # otherwise), as a health endpoint that starts redirecting is worth seeing.
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            # No proxy or .netrc from the environment: the check measures the endpoint
            # itself, the same from a shell as from the systemd unit.
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the client (the agent calls this when it stops)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def failed(self, result: Result) -> list[Sample]:
        return outcome("http", self.target, result)

    async def run(self) -> list[Sample]:
        started = time.perf_counter()
        # `timeout` bounds the whole probe; httpx's own bounds each connect, read and write.
        try:
            async with asyncio.timeout(self.timeout):
                result, status, expiry = await self._probe()
        except (TimeoutError, httpx.TimeoutException):
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
        if self._client is None:
            self._client = self._new_client()
        expiry: float | None = None
        request = self._client.build_request(
            self.config.method, self.url, headers=self.headers, content=self.config.body.encode() or None
        )
        try:
            response = await self._client.send(request, stream=True)
            try:
                if self.tls:
                    expiry = _expiry_of(response.extensions["network_stream"].get_extra_info("ssl_object"))
                body = await _read_body(response)
            finally:
                await response.aclose()
        except httpx.ConnectError as exc:
            tls_error = _ssl_error(exc)
            if isinstance(tls_error, ssl.SSLCertVerificationError):
                # The failed handshake leaves no certificate to read: tell how long it has (or
                # had) from a second, unverified one, so an expired one shows negative days.
                return "tls_error", None, await self._unverified_expiry()
            return ("tls_error" if tls_error else "connection_failed"), None, None
        except httpx.TransportError:
            return "connection_failed", None, expiry
        status = response.status_code
        expected = self.config.expect_status
        if not (status in expected if expected else status < 400):
            return "bad_status", status, expiry
        if self.body_match is not None and not self.body_match.search(body.decode("utf-8", "replace")):
            return "bad_content", status, expiry
        return "ok", status, expiry

    async def _unverified_expiry(self) -> float | None:
        host = self.url.host
        try:
            _, writer = await asyncio.open_connection(
                host, self.url.port or 443, ssl=self._ssl_context(verify=False), server_hostname=host
            )
        except OSError:
            return None
        try:
            return _expiry_of(writer.get_extra_info("ssl_object"))
        finally:
            writer.close()


async def _read_body(response: httpx.Response) -> bytes:
    """Up to ``MAX_BODY`` of the body as sent (chunked framing removed); what follows is
    never read."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk[: MAX_BODY - len(body)]
        if len(body) >= MAX_BODY:
            break
    return bytes(body)


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connection, if that is what it was (httpx and httpcore
    each wrap the one below them)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


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
