"""The one way the tests build an HTTP server on loopback: pytest-httpserver's ``HTTPServer``."""

from __future__ import annotations

import logging

from pytest_httpserver import HTTPServer
from werkzeug import Request


def loopback_httpserver() -> HTTPServer:
    """A pytest-httpserver ``HTTPServer`` on 127.0.0.1 and a free port, not yet started (use it
    as a context manager, or ``start()`` and ``stop()``). Each connection is answered in a
    thread of its own, so a handler that sleeps to play a slow receiver holds up no other
    request; werkzeug's listen backlog is 128, so bursts of new connections are not dropped."""
    # werkzeug logs every request at INFO; a test reading its captured log means the service's lines
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return HTTPServer(host="127.0.0.1", port=0, threaded=True)


def received(server: HTTPServer) -> list[Request]:
    """Every request ``server`` has answered, in order (its body is ``get_data()``, or
    ``get_json(force=True)``, or ``form``)."""
    return [request for request, _ in server.log]
