"""A loopback HTTP server standing in for every webhook channel of a test.

pytest-httpserver serves; one handler takes every ``POST /<channel>``, records it the moment
it arrives (a real receiver acts on what it got even when its answer never reaches the
sender), then answers with that channel's scripted status, after an optional delay."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Self

from pytest_httpserver import URI_DEFAULT
from werkzeug import Request, Response
from werkzeug.datastructures import Headers

from tests.support.httpserver import loopback_httpserver


@dataclass(frozen=True)
class Posted:
    """One request as the receiver got it."""

    channel: str
    #: The JSON body, decoded.
    body: Any
    #: Case-insensitive, as HTTP header names are.
    headers: Headers
    #: ``time.monotonic()`` on arrival.
    at: float
    #: The body as sent (what a signature covers).
    raw: bytes

    @property
    def alert_id(self) -> str:
        return str(self.body["alert"]["id"])

    @property
    def transition(self) -> str:
        return str(self.body["transition"])

    @property
    def idempotency_key(self) -> str:
        return self.headers.get("Idempotency-Key", "")


class WebhookReceiver:
    """One server for every channel: ``/<channel>`` records the JSON body and answers with the
    channel's next scripted status from ``statuses``, else ``always.get(channel, 200)``, after
    ``delay`` seconds. A failure status comes with the body ``{"error": "scripted failure"}``,
    a 429 with ``Retry-After: 0``. Started at once; ``close()`` (or leaving a ``with`` block)
    stops it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.requests: list[Posted] = []
        self.statuses: dict[str, list[int]] = {}
        self.always: dict[str, int] = {}
        self._delay = delay
        self._lock = threading.Lock()
        self.server = loopback_httpserver()
        self.server.expect_request(URI_DEFAULT, method="POST").respond_with_handler(self._answer)
        self.server.start()

    def _answer(self, request: Request) -> Response:
        arrived, raw = time.monotonic(), request.get_data()
        posted = Posted(request.path.strip("/"), json.loads(raw), Headers(request.headers), arrived, raw)
        with self._lock:
            self.requests.append(posted)
            script = self.statuses.get(posted.channel)
            status = script.pop(0) if script else self.always.get(posted.channel, 200)
        if self._delay:
            time.sleep(self._delay)
        reply = b"{}" if status < 400 else b'{"error": "scripted failure"}'
        headers = {"Retry-After": "0"} if status == 429 else {}
        return Response(reply, status, headers, content_type="application/json")

    def url(self, channel: str) -> str:
        return self.server.url_for(channel)

    def posted(self, channel: str | None = None) -> list[Posted]:
        """Every request so far (to ``channel`` only, when given), in order of arrival."""
        with self._lock:
            return [p for p in self.requests if channel is None or p.channel == channel]

    def bodies(self, channel: str) -> list[Any]:
        """The JSON body of every request ``channel`` got."""
        return [p.body for p in self.posted(channel)]

    def transitions(self, channel: str) -> list[tuple[str, str]]:
        """(alert id, transition) of every webhook message ``channel`` got."""
        return [(p.alert_id, p.transition) for p in self.posted(channel)]

    def close(self) -> None:
        if self.server.is_running():
            self.server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
