"""A loopback HTTP server standing in for every webhook channel of a test.

``POST /<channel>`` is recorded the moment it arrives (a real receiver acts on what it got
even when its answer never reaches the sender), then answered with that channel's scripted
status, after an optional delay."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class LoopbackServer(ThreadingHTTPServer):
    """Answers each connection in a thread. The listen backlog is raised from socketserver's 5:
    a full backlog drops the notifier's new connections, which then wait a whole second for
    TCP to retransmit the SYN, and a message arrives late for no reason of the notifier's."""

    daemon_threads = True
    request_queue_size = 128


@dataclass(frozen=True)
class Posted:
    """One request as the receiver got it."""

    channel: str
    body: Any
    headers: dict[str, str]
    #: ``time.monotonic()`` on arrival.
    at: float

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
    ``delay`` seconds. Started at once; ``close()`` (or leaving a ``with`` block) stops it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.requests: list[Posted] = []
        self.statuses: dict[str, list[int]] = {}
        self.always: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                posted = Posted(self.path.strip("/"), body, dict(self.headers.items()), time.monotonic())
                with receiver._lock:
                    receiver.requests.append(posted)
                    script = receiver.statuses.get(posted.channel)
                    status = script.pop(0) if script else receiver.always.get(posted.channel, 200)
                if delay:
                    time.sleep(delay)
                # a sender killed while it waited for the answer is no error of the receiver's
                with contextlib.suppress(ConnectionError):
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = LoopbackServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, channel: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/{channel}"

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
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
