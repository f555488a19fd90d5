"""The shipped configuration is a tested product: every rule of every rule file in the
repository (``rules/``, the examples in ``docs/rules.md``, the evaluator's kinds fixture),
loaded with the evaluator's own rule loader and rendered with its own templates, is
delivered through every channel type for every kind of message, to real servers on
loopback (aiosmtpd for email, pytest-httpserver for the others).

A test alert that carries every annotation proves nothing about a rule that has only a
summary: email once failed for every shipped rule because every test alert had a
``runbook_url``. Here the alerts are the rules' own.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pytest_httpserver import URI_DEFAULT, HTTPServer
from werkzeug import Request

from signalfire.evaluator.rules import Rule, load_rules, parse_rule_text
from signalfire.events import AlertEvent
from signalfire.notifier.channels import (
    Channel,
    ChannelConfig,
    ChannelContext,
    Notification,
    build_channel,
    message,
)
from signalfire.notifier.channels.discord import CONTENT_LIMIT, MESSAGE_LIMIT, embed_size
from signalfire.notifier.channels.http import new_session
from signalfire.notifier.channels.sms import segment_count
from signalfire.notifier.cli import make_test_notification
from tests.support.httpserver import loopback_httpserver, received
from tests.support.smtp import Mailbox, smtp_server

REPO = Path(__file__).resolve().parents[2]
T0 = 1_763_794_800.0


def rule_sources() -> list[tuple[str, list[Rule]]]:
    """Every rule file in the repository and every rule-file example in the docs."""
    sources: list[tuple[str, list[Rule]]] = []
    files = sorted((REPO / "rules").glob("*.yaml")) + sorted(
        p for p in (REPO / "tests/unit/evaluator/rules").glob("*.yaml") if not p.stem.endswith("_test")
    )
    for path in files:
        sources.append((str(path.relative_to(REPO)), load_rules([str(path)])))
    for doc in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            if not re.search(r"^rules:", block.group(1), re.M):
                continue
            line = text[: block.start()].count("\n") + 2
            where = f"{doc.relative_to(REPO)}:{line}"
            rules, errors = parse_rule_text(block.group(1), where)
            assert not errors, [str(e) for e in errors]
            sources.append((where, rules))
    return sources


SOURCES = rule_sources()
RULES = [(f"{where}:{rule.name}", rule) for where, rules in SOURCES for rule in rules]
CHANNEL_TYPES = ["email", "slack", "discord", "pagerduty", "webhook", "sms"]
KINDS = ["firing", "resolved", "repeat", "escalation", "group", "digest", "test"]


def series_labels(rule: Rule) -> dict[str, str]:
    """Labels a series of this rule carries: those its templates read (``labels.mount``), the
    ones its ``where`` requires, and ``env`` as the dev agent adds."""
    labels = {"env": "dev"}
    for text in rule.spec.annotations.values():
        for name in re.findall(r"labels\.(\w+)|labels\[['\"](\w+)['\"]\]", text):
            key = name[0] or name[1]
            labels[key] = f"{key}-1"
    for name, written in rule.spec.where.items():
        value = str(written).lstrip("=")
        if not value.startswith(("!", "~")) and re.fullmatch(r"[\w.-]+", value):
            labels[name] = value
    return labels


def event(rule: Rule, host: str, status: str = "firing") -> AlertEvent:
    """The alert event the evaluator emits for ``rule`` on ``host`` (its annotations
    rendered by the rule's own templates, as :mod:`signalfire.evaluator.engine` does)."""
    labels = {**series_labels(rule), **rule.labels}
    threshold = rule.condition.threshold
    value = threshold + 1.5
    context = {"value": value, "threshold": threshold, "host": host, "labels": labels, "rule": rule.name}
    annotations, failed = rule.render_annotations(context)
    assert failed == [], f"{rule.origin}: annotations {failed} failed to render"
    alert = AlertEvent(
        id=f"{rule.name}-{host}",
        fingerprint=f"fp-{rule.name}-{host}",
        rule=rule.name,
        status="firing",
        severity=rule.severity,
        host=host,
        starts_at=T0,
        time=T0,
        labels=labels,
        annotations=annotations,
        value=value,
        threshold=threshold,
    )
    if status == "resolved":
        alert = msgspec.structs.replace(alert, status="resolved", ends_at=T0 + 300, time=T0 + 300, seq=1)
    return alert


def notification(rule: Rule, kind: str) -> Notification:
    firing = event(rule, "web-1")
    if kind == "resolved":
        return Notification(alert=event(rule, "web-1", "resolved"))
    if kind in ("repeat", "escalation"):
        return Notification(alert=firing, transition=kind)  # type: ignore[arg-type]
    if kind == "group":
        return Notification(alert=firing, alerts=(firing, event(rule, "web-2"), event(rule, "db-1")))
    if kind == "digest":  # one still firing, one that fired and resolved within the period
        return Notification(alert=firing, alerts=(firing, event(rule, "web-2", "resolved")), digest=True)
    if kind == "test":
        return Notification(alert=firing, test=True)
    return Notification(alert=firing)


# --- the servers, one each for the whole matrix -------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[HTTPServer]:
    with loopback_httpserver() as server:
        # 200 with a JSON body satisfies every HTTP channel (Twilio reads `sid` from it)
        server.expect_request(URI_DEFAULT, method="POST").respond_with_data(
            '{"sid": "SM1", "status": "queued"}'
        )
        yield server


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


def configs(provider: HTTPServer, smtp_port: int) -> dict[str, Any]:
    plain = {"max_attempts": 1, "rate_limit": 0}
    return {
        "email": {
            "type": "email",
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "from": "signalfire@example.com",
            "to": ["ops@example.com"],
            **plain,
        },
        "slack": {"type": "slack", "webhook_url_env": "SLACK_URL", **plain},
        "discord": {"type": "discord", "webhook_url_env": "DISCORD_URL", **plain},
        "pagerduty": {
            "type": "pagerduty",
            "routing_key_env": "PD_KEY",
            "url": provider.url_for("/pd"),
            **plain,
        },
        "webhook": {"type": "webhook", "url": provider.url_for("/webhook"), **plain},
        "sms": {
            "type": "sms",
            "account_sid": "AC1",
            "from": "+14155550100",
            "to": "+14155550199",
            "auth_token_env": "TWILIO_TOKEN",
            "api_url": provider.url_for("/"),
            **plain,
        },
    }


@pytest.fixture
async def channels(provider: HTTPServer, smtp: tuple[Mailbox, int]) -> AsyncIterator[dict[str, Channel]]:
    environ = {
        "SLACK_URL": provider.url_for("/slack"),
        "DISCORD_URL": provider.url_for("/discord"),
        "PD_KEY": "routing-key",
        "TWILIO_TOKEN": "token",
    }
    async with new_session() as http:
        context = ChannelContext(http=http, environ=environ)
        built = {
            kind: build_channel(kind, msgspec.convert(raw, ChannelConfig), context)
            for kind, raw in configs(provider, smtp[1]).items()
        }
        yield built


# --- what a person receiving each channel would see ---------------------------------------


def rendered(text: str) -> None:
    """No template syntax reached the person."""
    assert "{{" not in text and "{%" not in text and "Undefined" not in text, text


def check_email(note: Notification, mail: EmailMessage) -> None:
    assert mail["Subject"] == message.shorten(message.title(note), 200)
    text, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text is not None and html is not None
    plain, markup = text.get_content(), html.get_content()
    rendered(plain)
    rendered(markup)
    for alert in note.covered:
        assert message.summary(alert) in plain
        if description := alert.annotations.get("description"):
            assert description in plain
    if note.digest:
        assert "(fired and resolved)" in plain


def check_http(kind: str, note: Notification, requests: list[Request]) -> None:
    if kind == "pagerduty":
        expected = [a for a in note.covered if not (note.digest and a.status == "resolved")]
        assert len(requests) == len(expected)
        for request, alert in zip(requests, expected, strict=True):
            body = request.get_json(force=True)
            assert body["dedup_key"] == alert.fingerprint
            action = {"resolved": "resolve"}.get(note.kind, "trigger")
            assert body["event_action"] == action
            if action == "trigger":
                assert body["payload"]["summary"] == message.shorten(message.summary(alert), 1024)
                assert body["payload"]["class"] == alert.rule
        return
    [request] = requests
    if kind == "sms":
        text = request.form["Body"]
        rendered(text)
        assert segment_count(text) == 1, text
        assert note.alert.rule in text or note.digest
        return
    body = request.get_json(force=True)
    rendered(json.dumps(body))
    if kind == "webhook":
        assert body["alert"]["rule"] == note.alert.rule
        assert body["alert"]["annotations"] == note.alert.annotations
        assert body["transition"] == note.kind and body["test"] == note.test
        assert len(body["alerts"]) == (len(note.covered) if len(note.covered) > 1 else 0)
    elif kind == "slack":
        assert body["text"].startswith(message.shorten(message.title(note), 3000)[:40])
        assert [a["title"] for a in body["attachments"]] == [message.heading(a, note) for a in note.covered]
        assert message.summary(note.alert) in body["attachments"][0]["text"]
    elif kind == "discord":
        assert len(body["content"]) <= CONTENT_LIMIT
        assert sum(embed_size(e) for e in body["embeds"]) <= MESSAGE_LIMIT
        assert len(body["embeds"]) == len(note.covered)
        assert body["embeds"][0]["description"].startswith(message.summary(note.alert)[:100])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channel_type", CHANNEL_TYPES)
@pytest.mark.parametrize("rule", [r for _, r in RULES], ids=[name for name, _ in RULES])
async def test_every_shipped_rule_reaches_every_channel_as_every_message_kind(  # noqa: PLR0917
    rule: Rule,
    channel_type: str,
    kind: str,
    channels: dict[str, Channel],
    provider: HTTPServer,
    smtp: tuple[Mailbox, int],
) -> None:
    note = notification(rule, kind)
    box, _ = smtp
    mails, requests = len(box.messages), len(provider.log)
    await channels[channel_type].send(note)
    if channel_type == "email":
        [(_, mail)] = box.messages[mails:]
        check_email(note, mail)
    else:
        check_http(channel_type, note, received(provider)[requests:])


@pytest.mark.parametrize("channel_type", CHANNEL_TYPES)
async def test_notify_test_message_reaches_every_channel(
    channel_type: str, channels: dict[str, Channel], provider: HTTPServer, smtp: tuple[Mailbox, int]
) -> None:
    note = make_test_notification("low")  # what `signalfire notify test CHANNEL` sends
    box, _ = smtp
    mails, requests = len(box.messages), len(provider.log)
    await channels[channel_type].send(note)
    if channel_type == "email":
        [(_, mail)] = box.messages[mails:]
        check_email(note, mail)
        assert mail["Subject"].startswith("[TEST]")
    else:
        check_http(channel_type, note, received(provider)[requests:])


def test_the_matrix_covers_the_shipped_rule_pack_and_the_docs_examples() -> None:
    where = {w for w, _ in SOURCES}
    assert "rules/default.yaml" in where
    assert any(w.startswith("docs/rules.md") for w in where)
    default = dict(SOURCES)["rules/default.yaml"]
    assert len(default) >= 8
    assert not any("runbook_url" in r.spec.annotations for r in default)  # the case that broke email
