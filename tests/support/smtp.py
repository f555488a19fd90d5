"""An aiosmtpd server on loopback that keeps every mail it accepts."""

from __future__ import annotations

import contextlib
import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from devstack import free_port


class Mailbox:
    """The aiosmtpd handler: keeps each accepted mail (parsed), each login tried, and refuses
    every recipient with ``refuse`` (an SMTP code) while that is set. Its only password is
    ``mail-secret``."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.refuse: int | None = None

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.refuse is not None:
            return f"{self.refuse} mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope, parsed))
        return "250 Message accepted"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, auth: Any
    ) -> Any:
        assert isinstance(auth, LoginPassword)
        self.logins.append((auth.login, auth.password))
        return AuthResult(success=auth.password == b"mail-secret", handled=False)


@contextlib.contextmanager
def smtp_server(*, login: bool = False, **options: Any) -> Iterator[tuple[Mailbox, int]]:
    """A running SMTP server on a free loopback port and its mailbox: ``(mailbox, port)``.
    With ``login`` it offers AUTH, checked by :meth:`Mailbox.authenticate`; ``options`` go to
    aiosmtpd's ``Controller`` (TLS, whether AUTH is required). Stopped on leaving."""
    box = Mailbox()
    port = free_port()
    if login:
        options["authenticator"] = box.authenticate
    controller = Controller(box, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()
