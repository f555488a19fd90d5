"""Every channel type against a real server on loopback: aiosmtpd for email, pytest-httpserver
standing in for Slack, Discord, PagerDuty and Twilio. Exact payloads, what each answer means
(accepted, retry with its wait, permanent failure), and timeouts."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import msgspec
import pytest
from devstack import free_port
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from signalfire.config import ConfigError, Duration
from signalfire.notifier.channels import ChannelContext, DeliveryError, Notification, build_channel
from signalfire.notifier.channels.discord import DiscordChannelConfig
from signalfire.notifier.channels.email import EmailChannelConfig
from signalfire.notifier.channels.http import new_session
from signalfire.notifier.channels.pagerduty import PagerDutyChannelConfig
from signalfire.notifier.channels.slack import SlackChannelConfig
from signalfire.notifier.channels.sms import SmsChannelConfig, segment_count
from tests.support.alerts import firing_alert
from tests.support.httpserver import received
from tests.support.smtp import Mailbox, smtp_server

#: For channels built only to check their settings: they never make a request.
NO_HTTP = cast(aiohttp.ClientSession, None)

ALERT = firing_alert(
    "alert-1",
    fingerprint="fp-highcpu-web1",
    starts_at=1_763_794_800.0,
    time=1_763_794_860.0,
    labels={"team": "ops"},
    annotations={
        "summary": "CPU 93.2% on web-1",
        "description": "<b>busy</b> for 5 minutes",
        "runbook_url": "https://runbooks.example.com/cpu",
    },
    value=93.2,
    threshold=80.0,
)
RESOLVED = msgspec.structs.replace(ALERT, status="resolved", ends_at=1_763_795_000.0)


def hanging(seconds: float) -> Callable[[Request], Response]:
    """A provider that answers only after ``seconds`` (to exercise the channels' timeouts)."""

    def answer(request: Request) -> Response:
        time.sleep(seconds)
        return Response(b"")

    return answer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as client:
        yield client


def channel(config: Any, http: aiohttp.ClientSession, **environ: str) -> Any:
    return build_channel("chan", config, ChannelContext(http=http, environ=environ))


async def failure(chan: Any, notification: Notification) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await chan.send(notification)
    return caught.value


# --- email -------------------------------------------------------------------------------


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server(login=True, auth_require_tls=False, auth_required=False) as server:
        yield server


def email_config(port: int, **overrides: Any) -> EmailChannelConfig:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "to": ["oncall@example.com", "lead@example.com"],
        "from": "signalfire@example.com",
    }
    fields.update(overrides)
    return msgspec.convert(fields, EmailChannelConfig, from_attributes=False)


async def test_email_arrives_with_text_and_escaped_html_bodies(
    smtp: tuple[Mailbox, int], http: aiohttp.ClientSession
) -> None:
    box, port = smtp
    config = email_config(port, username="alerts", password_env="SMTP_PASSWORD")
    chan = channel(config, http, SMTP_PASSWORD="mail-secret")
    await chan.send(Notification(alert=ALERT))

    [(envelope, mail)] = box.messages
    assert envelope.mail_from == "signalfire@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "lead@example.com"]
    assert box.logins == [(b"alerts", b"mail-secret")]
    assert mail["Subject"] == "[FIRING] HighCPU on web-1 (high)"
    assert mail["To"] == "oncall@example.com, lead@example.com"
    assert mail["X-Signalfire-Alert"] == "alert-1"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    plain = text.get_content()
    assert "CPU 93.2% on web-1" in plain
    assert "Value: 93.2" in plain and "Threshold: 80" in plain and "team: ops" in plain
    assert "Runbook: https://runbooks.example.com/cpu" in plain
    markup = html.get_content()
    assert "&lt;b&gt;busy&lt;/b&gt;" in markup  # annotations are escaped, never markup
    assert "#f57c00" in markup  # the severity colour
    assert '<a href="https://runbooks.example.com/cpu">' in markup


async def test_email_resolved_subject_and_refusals(
    smtp: tuple[Mailbox, int], http: aiohttp.ClientSession
) -> None:
    box, port = smtp
    chan = channel(email_config(port), http)
    await chan.send(Notification(alert=RESOLVED))
    assert box.messages[-1][1]["Subject"] == "[RESOLVED] HighCPU on web-1 (high)"

    box.refuse = 550
    error = await failure(chan, Notification(alert=ALERT))
    assert not error.retryable and "550" in str(error)
    box.refuse = 451
    error = await failure(chan, Notification(alert=ALERT))
    assert error.retryable


async def test_email_wrong_password_is_permanent_and_never_shown(
    smtp: tuple[Mailbox, int], http: aiohttp.ClientSession
) -> None:
    _, port = smtp
    config = email_config(port, username="alerts", password_env="SMTP_PASSWORD")
    error = await failure(channel(config, http, SMTP_PASSWORD="wrong-pass"), Notification(alert=ALERT))
    assert not error.retryable
    assert "SMTP login refused" in str(error) and "wrong-pass" not in str(error)


async def test_email_server_away_is_retryable(http: aiohttp.ClientSession) -> None:
    error = await failure(channel(email_config(free_port()), http), Notification(alert=ALERT))
    assert error.retryable


async def test_email_starttls_against_a_plain_server_fails_clearly(
    smtp: tuple[Mailbox, int], http: aiohttp.ClientSession
) -> None:
    _, port = smtp
    error = await failure(channel(email_config(port, security="starttls"), http), Notification(alert=ALERT))
    assert "STARTTLS" in str(error) or "starttls" in str(error).lower()


def test_email_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("from-file\n")
    config = email_config(25, username="u", password_file=str(secret))
    chan = build_channel("mail", config, ChannelContext(http=NO_HTTP, environ={}))
    assert chan._password == "from-file"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"channels.mail.password_file: cannot read"):
        build_channel(
            "mail",
            email_config(25, username="u", password_file=str(tmp_path / "missing")),
            ChannelContext(http=NO_HTTP, environ={}),
        )


# --- Slack -------------------------------------------------------------------------------


async def test_slack_webhook_posts_a_coloured_attachment(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_request("/services/T0/B0/secret", method="POST").respond_with_data("ok")
    config = SlackChannelConfig(webhook_url_env="SLACK_URL")
    chan = channel(config, http, SLACK_URL=httpserver.url_for("/services/T0/B0/secret"))
    assert await chan.send(Notification(alert=ALERT)) is None
    [request] = received(httpserver)
    assert request.path == "/services/T0/B0/secret"
    body = request.get_json(force=True)
    assert body["text"] == "[FIRING] HighCPU on web-1 (high): CPU 93.2% on web-1"
    [attachment] = body["attachments"]
    assert attachment["color"] == "#f57c00"
    assert attachment["title"] == "HighCPU on web-1"
    assert attachment["title_link"] == "https://runbooks.example.com/cpu"
    assert {"title": "Value", "value": "93.2", "short": True} in attachment["fields"]

    await chan.send(Notification(alert=RESOLVED))
    assert received(httpserver)[-1].get_json(force=True)["attachments"][0]["color"] == "#2e7d32"


async def test_slack_bot_threads_the_resolved_notice_under_the_original(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_request("/api/chat.postMessage", method="POST").respond_with_json(
        {"ok": True, "channel": "C1", "ts": "1763794860.000100"}
    )
    config = SlackChannelConfig(token_env="SLACK_TOKEN", channel="#ops", api_url=httpserver.url_for("/api/"))
    chan = channel(config, http, SLACK_TOKEN="xoxb-test-token")
    reference = await chan.send(Notification(alert=ALERT))
    assert reference == "1763794860.000100"
    await chan.send(Notification(alert=RESOLVED, reference=reference))

    first, second = received(httpserver)
    assert first.path == "/api/chat.postMessage"
    assert first.headers["Authorization"] == "Bearer xoxb-test-token"
    posted = first.get_json(force=True) if first.get_data().startswith(b"{") else first.form
    assert posted["channel"] == "#ops"
    assert "thread_ts" not in posted
    threaded = second.get_json(force=True) if second.get_data().startswith(b"{") else second.form
    assert threaded["thread_ts"] == "1763794860.000100"


async def test_slack_rate_limit_and_errors(httpserver: HTTPServer, http: aiohttp.ClientSession) -> None:
    config = SlackChannelConfig(token_env="SLACK_TOKEN", channel="#ops", api_url=httpserver.url_for("/api/"))
    chan = channel(config, http, SLACK_TOKEN="xoxb-test-token")
    post = "/api/chat.postMessage"
    httpserver.expect_ordered_request(post).respond_with_data(
        '{"ok": false, "error": "ratelimited"}', 429, {"Retry-After": "7"}
    )
    httpserver.expect_ordered_request(post).respond_with_json({"ok": False, "error": "channel_not_found"})
    limited = await failure(chan, Notification(alert=ALERT))
    assert limited.retryable and limited.retry_after == 7.0
    refused = await failure(chan, Notification(alert=ALERT))
    assert not refused.retryable and "channel_not_found" in str(refused)
    assert "xoxb" not in str(limited) + str(refused)


async def test_slack_webhook_500_is_retryable_and_a_hang_times_out(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    chan = channel(
        SlackChannelConfig(webhook_url_env="SLACK_URL", timeout=Duration(1)),
        http,
        SLACK_URL=httpserver.url_for("/hook"),
    )
    httpserver.expect_ordered_request("/hook").respond_with_data("oops", 500)
    httpserver.expect_ordered_request("/hook").respond_with_handler(hanging(2.0))
    assert (await failure(chan, Notification(alert=ALERT))).retryable
    hung = await failure(chan, Notification(alert=ALERT))
    assert hung.retryable and "/hook" not in str(hung)


# --- Discord -----------------------------------------------------------------------------


async def test_discord_embed_with_severity_colour(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_request("/wh", method="POST").respond_with_data(status=204)
    chan = channel(
        DiscordChannelConfig(webhook_url_env="DISCORD_URL"), http, DISCORD_URL=httpserver.url_for("/wh")
    )
    await chan.send(Notification(alert=ALERT))
    body = received(httpserver)[0].get_json(force=True)
    assert body["content"] == "[FIRING] HighCPU on web-1 (high)"
    assert body["allowed_mentions"] == {"parse": []}
    [embed] = body["embeds"]
    assert embed["color"] == 0xF57C00
    assert embed["title"] == "HighCPU on web-1"
    assert embed["description"].startswith("CPU 93.2% on web-1")
    assert {"name": "Host", "value": "web-1", "inline": True} in embed["fields"]


async def test_discord_keeps_within_its_limits(httpserver: HTTPServer, http: aiohttp.ClientSession) -> None:
    httpserver.expect_request("/wh", method="POST").respond_with_data(status=204)
    huge = msgspec.structs.replace(
        ALERT,
        rule="R" * 200,
        annotations={"summary": "s" * 5000},
        labels={f"label{i:02d}": "v" * 2000 for i in range(40)},
    )
    alerts = tuple(msgspec.structs.replace(huge, id=f"a{i}") for i in range(15))
    chan = channel(
        DiscordChannelConfig(webhook_url_env="DISCORD_URL"), http, DISCORD_URL=httpserver.url_for("/wh")
    )
    await chan.send(Notification(alert=alerts[0], alerts=alerts))
    body = received(httpserver)[0].get_json(force=True)
    assert 1 <= len(body["embeds"]) <= 10
    total = 0
    for embed in body["embeds"]:
        assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
        assert len(embed["fields"]) <= 25
        assert all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in embed["fields"])
        total += len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
        total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000
    assert "(showing" in body["content"]


async def test_discord_429_retry_after_from_the_body(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_ordered_request("/wh").respond_with_data(
        '{"message": "You are being rate limited.", "retry_after": 2.5}', 429
    )
    chan = channel(
        DiscordChannelConfig(webhook_url_env="DISCORD_URL"), http, DISCORD_URL=httpserver.url_for("/wh")
    )
    error = await failure(chan, Notification(alert=ALERT))
    assert error.retryable and error.retry_after == 2.5


# --- PagerDuty ---------------------------------------------------------------------------


async def test_pagerduty_trigger_acknowledge_resolve_share_the_dedup_key(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_request("/v2/enqueue", method="POST").respond_with_data(
        '{"status": "success", "dedup_key": "fp-highcpu-web1"}', 202
    )
    config = PagerDutyChannelConfig(routing_key_env="PD_KEY", url=httpserver.url_for("/v2/enqueue"))
    chan = channel(config, http, PD_KEY="R0UT1NGKEY")
    assert chan.acknowledges
    await chan.send(Notification(alert=ALERT))
    await chan.send(Notification(alert=ALERT, transition="acknowledged"))
    await chan.send(Notification(alert=RESOLVED))

    trigger, ack, resolve = (r.get_json(force=True) for r in received(httpserver))
    assert trigger == {
        "routing_key": "R0UT1NGKEY",
        "event_action": "trigger",
        "dedup_key": "fp-highcpu-web1",
        "client": "Signalfire",
        "links": [{"href": "https://runbooks.example.com/cpu", "text": "Runbook"}],
        "payload": {
            "summary": "CPU 93.2% on web-1",
            "source": "web-1",
            "severity": "error",
            "timestamp": "2025-11-22T07:00:00.000+00:00",
            "component": "web-1",
            "class": "HighCPU",
            "custom_details": {
                "rule": "HighCPU",
                "alert_id": "alert-1",
                "team": "ops",
                "value": 93.2,
                "threshold": 80.0,
                "description": "<b>busy</b> for 5 minutes",
            },
        },
    }
    assert ack == {"routing_key": "R0UT1NGKEY", "event_action": "acknowledge", "dedup_key": "fp-highcpu-web1"}
    assert resolve == {"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "fp-highcpu-web1"}


@pytest.mark.parametrize(
    ("ours", "theirs"), [("critical", "critical"), ("high", "error"), ("medium", "warning"), ("low", "info")]
)
async def test_pagerduty_severities(
    httpserver: HTTPServer, http: aiohttp.ClientSession, ours: str, theirs: str
) -> None:
    httpserver.expect_request("/e", method="POST").respond_with_data(status=202)
    chan = channel(
        PagerDutyChannelConfig(routing_key_env="PD_KEY", url=httpserver.url_for("/e")), http, PD_KEY="k"
    )
    await chan.send(Notification(alert=msgspec.structs.replace(ALERT, severity=ours)))
    assert received(httpserver)[0].get_json(force=True)["payload"]["severity"] == theirs


async def test_pagerduty_bad_request_is_permanent(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_ordered_request("/e").respond_with_data('{"status": "invalid event"}', 400)
    httpserver.expect_ordered_request("/e").respond_with_data(status=503)
    chan = channel(
        PagerDutyChannelConfig(routing_key_env="PD_KEY", url=httpserver.url_for("/e")), http, PD_KEY="k"
    )
    assert not (await failure(chan, Notification(alert=ALERT))).retryable
    assert (await failure(chan, Notification(alert=ALERT))).retryable


# --- SMS (Twilio) ------------------------------------------------------------------------


TWILIO_MESSAGES = "/2010-04-01/Accounts/AC0123/Messages.json"


def sms_config(url: str) -> SmsChannelConfig:
    return msgspec.convert(
        {
            "account_sid": "AC0123",
            "from": "+14155550100",
            "to": "+14155550199",
            "auth_token_env": "TWILIO_TOKEN",
            "api_url": url,
        },
        SmsChannelConfig,
    )


async def test_sms_posts_twilio_form_with_basic_auth_in_one_segment(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_data(
        '{"sid": "SM123", "status": "queued"}', 201
    )
    chan = channel(sms_config(httpserver.url_for("/")), http, TWILIO_TOKEN="tw-token")
    # é is in the GSM-7 alphabet (one septet); [ ] cost two each
    long = msgspec.structs.replace(ALERT, annotations={"summary": "CPU é [x] " + "x" * 300})
    assert await chan.send(Notification(alert=long)) == "SM123"
    [request] = received(httpserver)
    assert request.path == TWILIO_MESSAGES
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"AC0123:tw-token").decode()
    form = request.form
    assert (form["To"], form["From"]) == ("+14155550199", "+14155550100")
    assert form["Body"].startswith("[HIGH] FIRING HighCPU web-1: CPU é [x] x")
    # 156 characters are 160 septets: the four brackets cost two each
    assert len(form["Body"]) == 156 and form["Body"].endswith("...")
    assert segment_count(form["Body"]) == 1


async def test_sms_errors(httpserver: HTTPServer, http: aiohttp.ClientSession) -> None:
    httpserver.expect_ordered_request(TWILIO_MESSAGES).respond_with_data(
        '{"code": 20003, "message": "Authenticate"}', 401
    )
    httpserver.expect_ordered_request(TWILIO_MESSAGES).respond_with_data(status=429)
    chan = channel(sms_config(httpserver.url_for("/")), http, TWILIO_TOKEN="tw-token")
    denied = await failure(chan, Notification(alert=ALERT))
    assert not denied.retryable and "20003" in str(denied) and "tw-token" not in str(denied)
    assert (await failure(chan, Notification(alert=ALERT))).retryable


def test_channel_settings_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="to: expected a phone number"):
        msgspec.convert(
            {"account_sid": "AC1", "from": "+14155550100", "to": "555", "auth_token_env": "T"},
            SmsChannelConfig,
        )
    with pytest.raises(ValueError, match="webhook_url_env: set either"):
        SlackChannelConfig()
    with pytest.raises(msgspec.ValidationError, match="channel: required with a bot token"):
        msgspec.convert({"token_env": "T"}, SlackChannelConfig)
    with pytest.raises(msgspec.ValidationError, match="from: the sender address is required"):
        msgspec.convert({"host": "h", "to": ["a@b"]}, EmailChannelConfig)


def test_missing_provider_secret_names_the_setting() -> None:
    context = ChannelContext(http=NO_HTTP, environ={})
    with pytest.raises(
        ConfigError, match=r"channels.pd.routing_key_env: environment variable PD_KEY is not set"
    ):
        build_channel("pd", PagerDutyChannelConfig(routing_key_env="PD_KEY"), context)


async def test_channels_time_out_on_a_hanging_provider(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    httpserver.expect_request("/e", method="POST").respond_with_handler(hanging(1.5))
    chan = channel(
        PagerDutyChannelConfig(routing_key_env="PD_KEY", url=httpserver.url_for("/e"), timeout=Duration(0.3)),
        http,
        PD_KEY="k",
    )
    started = asyncio.get_running_loop().time()
    error = await failure(chan, Notification(alert=ALERT))
    assert error.retryable and "no answer within 0.3s" in str(error)
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_redirects_are_not_followed_and_a_refused_connection_is_retried(
    httpserver: HTTPServer, http: aiohttp.ClientSession
) -> None:
    secret_path = "/api/webhooks/42/secret-token"
    httpserver.expect_request(secret_path, method="POST").respond_with_data(
        status=302, headers={"Location": httpserver.url_for("/elsewhere")}
    )
    chan = channel(DiscordChannelConfig(webhook_url_env="URL"), http, URL=httpserver.url_for(secret_path))
    moved = await failure(chan, Notification(alert=ALERT))
    assert not moved.retryable and str(moved) == "HTTP 302"
    assert [r.path for r in received(httpserver)] == [secret_path]

    away = channel(
        DiscordChannelConfig(webhook_url_env="URL"), http, URL=f"http://127.0.0.1:{free_port()}{secret_path}"
    )
    refused = await failure(away, Notification(alert=ALERT))
    assert refused.retryable and str(refused).startswith("request failed:")
    assert "secret-token" not in str(refused)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the openssl command line tool)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_email_over_starttls_and_implicit_tls_with_login(
    certificate: tuple[Path, Path], http: aiohttp.ClientSession, security: str
) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    # aiosmtpd does not count implicit TLS as TLS for AUTH, hence auth_require_tls there
    tls: dict[str, Any] = (
        {"tls_context": context, "require_starttls": True}
        if security == "starttls"
        else {"ssl_context": context, "auth_require_tls": False}
    )
    with smtp_server(login=True, **tls) as (box, port):
        config = email_config(
            port, security=security, username="alerts", password_env="SMTP_PASSWORD", ca_file=str(cert)
        )
        await channel(config, http, SMTP_PASSWORD="mail-secret").send(Notification(alert=ALERT))
        # without the private CA the server is not trusted
        untrusted = email_config(port, security=security)
        error = await failure(channel(untrusted, http), Notification(alert=ALERT))
    assert len(box.messages) == 1 and box.logins == [(b"alerts", b"mail-secret")]
    assert "certificate" in str(error).lower()
