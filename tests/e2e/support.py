"""Helpers shared by the end-to-end tests: the webhook receiver, polling and API calls."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from devstack import Stack

HOST = "e2e-web-1.example.com"


class Receiver:
    """A webhook receiver: records every POST body it gets."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def statuses(self) -> list[str]:
        return [str(b.get("status")) for b in self.bodies if b.get("alert", {}).get("host") == HOST]


def wait_until(check: Any, timeout: float, what: str, stack_: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        dead = stack_.dead()
        if dead:
            logs = "\n".join(f"--- {s.name}\n{s.log_path.read_text()[-3000:]}" for s in dead)
            pytest.fail(f"service died while waiting for {what}:\n{logs}")
        time.sleep(0.05)
    logs = "\n".join(f"--- {s.name}\n{s.log_path.read_text()[-1500:]}" for s in stack_.services)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def api(running: Stack, path: str, **params: Any) -> Any:
    token = running.token_file.read_text().strip()
    response = httpx.get(
        f"{running.gateway_url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert response.status_code == 200, response.text
    return response.json()
