"""The ``email`` channel: one multipart message (plain text + HTML from Jinja2 templates)
per notification, through an SMTP server with STARTTLS or implicit TLS and optional login."""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Annotated, Literal

import aiosmtplib
import jinja2
import msgspec
from msgspec import Meta

from signalfire.config import Duration
from signalfire.notifier.channels import message
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, DeliveryError, Notification

TEMPLATES = Path(__file__).parent / "templates"


class EmailChannelConfig(ChannelSettings, tag="email"):
    """``type: email``. The SMTP password comes from ``password_env`` or ``password_file``."""

    host: str
    to: Annotated[list[str], Meta(min_length=1)]
    #: The sender address (YAML key ``from``).
    from_: str = msgspec.field(default="", name="from")
    port: int | None = None
    #: ``starttls`` (port 587), ``tls`` (implicit TLS, port 465) or ``none`` (port 25).
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    #: CA bundle to verify the server with instead of the system's (a private CA).
    ca_file: str | None = None
    timeout: Duration = Duration(30)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.from_:
            raise ValueError("from: the sender address is required")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("username: required when a password is configured")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.globals.update(summary=message.summary, facts=message.facts)
    return env


class EmailChannel:
    """Sends through SMTP; 4xx answers and connection trouble are retryable, 5xx are not."""

    acknowledges = False

    def __init__(self, name: str, config: EmailChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        self._password = context.secret(name, "password", config.password_env, config.password_file)
        self._templates = _environment()
        self._port = config.port or {"starttls": 587, "tls": 465, "none": 25}[config.security]

    def render(self, notification: Notification) -> EmailMessage:
        """The message for ``notification`` (also what tests parse)."""
        values = {
            "title": message.title(notification),
            "alerts": notification.covered,
            "colour": message.colour(notification),
            "channel": self.name,
            "test": notification.test,
        }
        mail = EmailMessage()
        mail["Subject"] = message.shorten(values["title"], 200)  # type: ignore[arg-type]
        mail["From"] = self._config.from_
        mail["To"] = ", ".join(self._config.to)
        mail["Date"] = formatdate(localtime=False)
        # A re-send after a crash carries the first attempt's Message-ID: mail stores that
        # de-duplicate on it (Gmail does) show the message once.
        mail["Message-ID"] = (
            f"<{notification.delivery_id}@signalfire>"
            if notification.delivery_id
            else make_msgid(domain="signalfire")
        )
        mail["X-Signalfire-Alert"] = notification.alert.id
        mail.set_content(self._templates.get_template("email.txt.j2").render(values))
        mail.add_alternative(self._templates.get_template("email.html.j2").render(values), subtype="html")
        return mail

    async def send(self, notification: Notification) -> None:
        config = self._config
        context = None
        if config.security != "none":
            context = ssl.create_default_context(cafile=config.ca_file)
        try:
            await aiosmtplib.send(
                self.render(notification),
                hostname=config.host,
                port=self._port,
                username=config.username if self._password is not None else None,
                password=self._password,
                use_tls=config.security == "tls",
                start_tls=config.security == "starttls",
                tls_context=context,
                timeout=float(config.timeout),
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP login refused: {exc.code} {exc.message}", retryable=False) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = ", ".join(f"{e.code} {e.message}" for e in exc.recipients)
            # 4xx is "try again later" (a full mailbox, greylisting); 5xx will not change.
            temporary = all(400 <= e.code < 500 for e in exc.recipients)
            raise DeliveryError(f"SMTP recipients refused: {codes}", retryable=temporary) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", retryable=400 <= exc.code < 500) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}", retryable=True) from None
