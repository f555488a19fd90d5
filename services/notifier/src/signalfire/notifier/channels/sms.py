"""The ``sms`` channel: a text message cut to fit the configured number of SMS segments,
through Twilio's Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``).

What fits a segment depends on the encoding the whole message needs (3GPP TS 23.038):
GSM-7 gives 160 septets, where the extension table's ``^ { } \\ [ ] ~ | €`` cost two
each; one character outside GSM-7 (a backtick, a Cyrillic letter, an emoji) turns the
whole message into UCS-2, 70 UTF-16 units. A message of several segments loses room to
the concatenation header: 153 septets or 67 units per segment.
"""

from __future__ import annotations

import asyncio
import base64
import re

import msgspec

from signalfire.config import Duration
from signalfire.notifier.channels import message
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, Notification
from signalfire.notifier.channels.http import post

#: The GSM 7-bit default alphabet (one septet each).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table: an escape septet plus one, two septets each.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
#: Units per segment: (a message of one segment, each segment of a longer message).
GSM7_SEGMENT = (160, 153)
UCS2_SEGMENT = (70, 67)
#: Look-alikes that keep an alert's text in GSM-7 rather than halving what fits.
TRANSLITERATE = str.maketrans(
    {"`": "'", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)
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
    #: SMS segments a message may take (carriers bill each); longer text is cut to fit.
    segments: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for field, value in (("from", self.from_), ("to", self.to)):
            if not PHONE.match(value):
                raise ValueError(f"{field}: expected a phone number in E.164 form like +14155550100")
        if (self.auth_token_env is None) == (self.auth_token_file is None):
            raise ValueError("auth_token_env: set exactly one of auth_token_env and auth_token_file")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError("api_url: expected an http:// or https:// URL")
        if not 1 <= self.segments <= 10:
            raise ValueError(f"segments: expected 1 to 10, got {self.segments}")


def is_gsm7(text: str) -> bool:
    """Whether ``text`` can be sent in the GSM 7-bit alphabet (else it needs UCS-2)."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _units(text: str) -> tuple[list[int], tuple[int, int]]:
    """The units each character costs, and the segment sizes of the encoding ``text`` needs."""
    if is_gsm7(text):
        return [2 if c in GSM7_EXTENSION else 1 for c in text], GSM7_SEGMENT
    # UCS-2 as phones send it: UTF-16, a character outside the BMP (an emoji) is two units
    return [2 if ord(c) > 0xFFFF else 1 for c in text], UCS2_SEGMENT


def segment_count(text: str) -> int:
    """The SMS segments ``text`` takes. Segments are filled in order and a character never
    straddles two (an extension character's escape stays with it; a surrogate pair too)."""
    units, (single, multi) = _units(text)
    if sum(units) <= single:
        return 1
    count, used = 1, 0
    for unit in units:
        if used + unit > multi:
            count, used = count + 1, 0
        used += unit
    return count


def fit(text: str, segments: int, ellipsis: str = "...") -> str:
    """``text`` cut (ending in ``ellipsis``) to take at most ``segments`` SMS segments."""
    if segment_count(text) <= segments:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits, with the ellipsis
        middle = (low + high + 1) // 2
        if segment_count(text[:middle].rstrip() + ellipsis) <= segments:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + ellipsis


def text(notification: Notification, segments: int = 1) -> str:
    """``[CRIT] FIRING HighCPU web-1: CPU 93% on web-1``, cut to fit ``segments`` SMS segments.

    A few look-alikes (backticks, curly quotes, dashes) become their GSM-7 forms; any other
    character outside GSM-7 is kept, and the message is then cut for UCS-2 (70 characters)."""
    alert = notification.alert
    count = len(notification.covered)
    label = message.LABELS[notification.kind]
    if notification.digest:
        ended = sum(1 for a in notification.covered if a.status == "resolved")
        head = f"[DIGEST] {count} alerts" + (f" ({ended} fired and resolved)" if ended else "")
    elif count > 1:
        head = f"[{SHORT[message.worst(notification).severity]}] {label} x{count} {alert.rule}"
    else:
        head = f"[{SHORT[alert.severity]}] {label} {alert.rule} {alert.host}: {message.summary(alert)}"
    return fit(" ".join(head.translate(TRANSLITERATE).split()), segments)


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
            form={
                "To": self._config.to,
                "From": self._config.from_,
                "Body": text(notification, self._config.segments),
            },
        )
        try:
            sid = response.json().get("sid")
        except (ValueError, AttributeError):
            return None
        return str(sid) if sid else None
