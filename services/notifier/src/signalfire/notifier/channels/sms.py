"""The ``sms`` channel: a text message of at most 160 characters through Twilio's
Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``)."""

from __future__ import annotations

import asyncio
import base64
import re

import msgspec

from signalfire.config import Duration
from signalfire.notifier.channels import message
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, Notification
from signalfire.notifier.channels.http import post

#: One SMS segment of the GSM 7-bit alphabet.
SMS_LIMIT = 160
PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
SHORT = {"critical": "CRIT", "high": "HIGH", "medium": "MED", "low": "LOW"}


class SmsChannelConfig(ChannelSettings, tag="sms"):
    """``type: sms``. ``account_sid`` is not secret; the auth token comes from
    ``auth_token_env`` or ``auth_token_file``. One recipient per channel, so a failed
    attempt never re-sends to a number that already got the message."""

    account_sid: str
    #: The sending number (YAML key ``from``) and the receiving one, E.164.
    from_: str = msgspec.field(default="", name="from")
    to: str = ""
    auth_token_env: str | None = None
    auth_token_file: str | None = None
    api_url: str = "https://api.twilio.com"
    timeout: Duration = Duration(10)

    def __post_init__(self) -> None:
        super().__post_init__()
        for field, value in (("from", self.from_), ("to", self.to)):
            if not PHONE.match(value):
                raise ValueError(f"{field}: expected a phone number in E.164 form like +14155550100")
        if (self.auth_token_env is None) == (self.auth_token_file is None):
            raise ValueError("auth_token_env: set exactly one of auth_token_env and auth_token_file")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError("api_url: expected an http:// or https:// URL")


def text(notification: Notification) -> str:
    """``[CRIT] FIRING HighCPU web-1: CPU 93% on web-1``, at most 160 plain ASCII characters
    (anything else would switch the SMS to UCS-2 and 70 characters)."""
    alert = notification.alert
    count = len(notification.covered)
    label = message.LABELS[notification.kind]
    if notification.digest:
        head = f"[DIGEST] {count} alerts"
    elif count > 1:
        head = f"[{SHORT[message.worst(notification).severity]}] {label} x{count} {alert.rule}"
    else:
        head = f"[{SHORT[alert.severity]}] {label} {alert.rule} {alert.host}: {message.summary(alert)}"
    plain = head.encode("ascii", "replace").decode("ascii")
    return message.shorten(" ".join(plain.split()), SMS_LIMIT)


class SmsChannel:
    """POSTs the form Twilio expects with HTTP basic auth (account SID, auth token)."""

    acknowledges = False

    def __init__(self, name: str, config: SmsChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        self._http = context.http
        self._slots = asyncio.Semaphore(config.concurrency)
        token = context.secret(name, "auth_token", config.auth_token_env, config.auth_token_file)
        assert token is not None
        basic = base64.b64encode(f"{config.account_sid}:{token}".encode()).decode("ascii")
        self._auth = {"Authorization": f"Basic {basic}"}
        self._url = f"{config.api_url.rstrip('/')}/2010-04-01/Accounts/{config.account_sid}/Messages.json"

    async def send(self, notification: Notification) -> str | None:
        response = await post(
            self._http,
            self._url,
            timeout=float(self._config.timeout),
            slots=self._slots,
            headers=self._auth,
            form={"To": self._config.to, "From": self._config.from_, "Body": text(notification)},
        )
        try:
            sid = response.json().get("sid")
        except (ValueError, AttributeError):
            return None
        return str(sid) if sid else None
