"""The ``email`` channel: one multipart message (plain text + HTML from Jinja2 templates)
per notification, through an SMTP server with STARTTLS or implicit TLS and optional login."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Annotated, Literal

import aiosmtplib
import jinja2
import msgspec
from msgspec import Meta

from signalfire.config import Duration
from signalfire.notifier.channels import message, templating
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, DeliveryError, Notification

#: The shipped templates (``email.txt.j2``, ``email.html.j2``).
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
    #: A Jinja2 template for the subject line instead of the message title (one line).
    subject: str | None = None
    #: Files holding Jinja2 templates for the plain-text and the HTML body instead of the
    #: shipped ones (the HTML one is HTML-escaped). Checked when the config is loaded.
    text_template: str | None = None
    html_template: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.from_:
            raise ValueError("from: the sender address is required")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("username: required when a password is configured")
        try:
            EmailTemplates.of(self)
        except templating.TemplateProblem as exc:
            raise ValueError(str(exc)) from None


class EmailTemplates(msgspec.Struct, frozen=True):
    """The compiled subject, text and HTML templates of one email channel."""

    subject: jinja2.Template | None
    text: jinja2.Template
    html: jinja2.Template

    @classmethod
    def of(cls, config: EmailChannelConfig) -> EmailTemplates:
        """Compile (and trial-render) the templates ``config`` names; the shipped ones for
        those it does not. Raises ``TemplateProblem`` starting with the setting's name."""

        def named(field: str, load: Callable[[], jinja2.Template]) -> jinja2.Template:
            try:
                return load()
            except templating.TemplateProblem as exc:
                raise templating.TemplateProblem(f"{field}: {exc}") from None

        subject = None
        if config.subject is not None:
            source = config.subject
            subject = named(
                "subject",
                lambda: templating.compile_template(templating.environment(), source, "subject"),
            )
        text_path, html_path = config.text_template, config.html_template
        text = (
            named("text_template", lambda: templating.load_template(text_path, html=False))
            if text_path is not None
            else _shipped("email.txt.j2", html=False)
        )
        html = (
            named("html_template", lambda: templating.load_template(html_path, html=True))
            if html_path is not None
            else _shipped("email.html.j2", html=True)
        )
        return cls(subject, text, html)


@functools.cache
def _shipped(name: str, *, html: bool) -> jinja2.Template:
    """A shipped template, compiled and checked once per process."""
    source = (TEMPLATES / name).read_text(encoding="utf-8")
    return templating.compile_template(templating.environment(html=html), source, name)


class EmailChannel:
    """Sends through SMTP; 4xx answers and connection trouble are retryable, 5xx are not."""

    acknowledges = False

    def __init__(self, name: str, config: EmailChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        self._password = context.secret(name, "password", config.password_env, config.password_file)
        self._templates = EmailTemplates.of(config)
        self._port = config.port or {"starttls": 587, "tls": 465, "none": 25}[config.security]

    def render(self, notification: Notification) -> EmailMessage:
        """The message for ``notification`` (also what tests parse)."""
        values = templating.context(notification, self.name)
        templates = self._templates
        subject = templates.subject.render(values) if templates.subject is not None else values["title"]
        mail = EmailMessage()
        mail["Subject"] = message.shorten(" ".join(str(subject).split()), 200)
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
        mail.set_content(templates.text.render(values))
        mail.add_alternative(templates.html.render(values), subtype="html")
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
