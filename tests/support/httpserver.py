"""The one way the tests build an HTTP server on loopback: pytest-httpserver's ``HTTPServer``."""

from __future__ import annotations

import logging

from pytest_httpserver import HTTPServer


def loopback_httpserver() -> HTTPServer:
    """A pytest-httpserver ``HTTPServer`` on 127.0.0.1 and a free port, not yet started (use it
    as a context manager, or ``start()`` and ``stop()``). Each connection is answered in a
    thread of its own, so a handler that sleeps to play a slow receiver holds up no other
    request; werkzeug's listen backlog is 128, so bursts of new connections are not dropped."""
    # werkzeug logs every request at INFO; a test reading its captured log means the service's lines
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return HTTPServer(host="127.0.0.1", port=0, threaded=True)
