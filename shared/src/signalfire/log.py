"""Structured logging for every service: one line per record, ``logfmt`` or JSON.

Fields passed with ``extra={...}`` become keys of the line, so logs can be searched by
subject, host or rule without parsing sentences::

    log.warning("dropped malformed batch", extra={"subject": msg.subject, "reason": str(exc)})

Secrets never reach a line: every formatted line passes through :func:`redact_secrets`, so a
URL with ``?token=…`` or an ``Authorization: Bearer …`` header shows ``[redacted]`` instead,
whichever library logged it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any, Literal

import msgspec

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


#: ``token=…`` (also ``access_token``, ``password``, ``secret``) in a query string or form,
#: ``Bearer …``, and the password of a ``scheme://user:password@host`` URL: the value runs to
#: the next separator or quote.
_SECRET = re.compile(
    r"(?i)(\b(?:access_token|token|password|passwd|secret|api_key)=|\bbearer\s+)[^\s&;,'\"\\]+"
    r"|(://[^:/@\s'\"]+:)[^@/\s'\"]+(?=@)"
)


def redact_secrets(text: str) -> str:
    """``text`` with the values of token-like query parameters, bearer credentials and URL
    passwords replaced by ``[redacted]``."""
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class LogfmtFormatter(logging.Formatter):
    """``ts=… level=… service=… msg="…" key=value``: readable by people and by Loki/Vector."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = [
            ("ts", _timestamp(record)),
            ("level", record.levelname.lower()),
            ("service", self.service),
            ("logger", record.name),
            ("msg", record.getMessage()),
            *_fields(record).items(),
        ]
        if record.exc_info:
            pairs.append(("error", self.formatException(record.exc_info)))
        return redact_secrets(" ".join(f"{k}={_quote(v)}" for k, v in pairs))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return redact_secrets(msgspec.json.encode(entry, enc_hook=str).decode())


def _quote(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def configure_logging(service: str, level: str = "info", fmt: Literal["logfmt", "json"] = "logfmt") -> None:
    """Send every ``signalfire`` log record to stderr in ``fmt``; call once at service start."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else LogfmtFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' chatter (uvicorn access lines, nats-py internals) stays at warnings.
    for noisy in ("uvicorn.access", "nats", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Throttle:
    """Whether a repeating log line is due: once per distinct ``key`` per ``every`` seconds.

    For errors that repeat while a condition lasts (a server away): the first is logged, the
    repeats are only counted by the caller's counter until ``every`` has passed.
    """

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable) -> bool:
        """``True`` (and remembered) when ``key`` was not due in the last ``every`` seconds."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        if len(self._last) >= 1000:  # distinct keys are few; bound them anyway
            self._last = {k: t for k, t in self._last.items() if now - t < self.every}
        self._last[key] = now
        return True
