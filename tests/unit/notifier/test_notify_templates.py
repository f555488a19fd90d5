"""Notification templates are strict about mistakes in the template (found when the config
is loaded, with file, line and field) and tolerant of alerts that lack an annotation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from signalfire.config import ConfigError
from signalfire.notifier.channels import ChannelContext, Notification, build_channel
from signalfire.notifier.channels.email import EmailChannel
from signalfire.notifier.config import check_notify_config, load_notify_config
from tests.support.alerts import firing_alert

BARE = firing_alert("a-1", now=1.0, fingerprint="fp", annotations={"summary": "CPU 93% on web-1"})


def config_with(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "notify.yaml"
    text = """\
    channels:
      mail:
        type: email
        host: 127.0.0.1
        from: alerts@example.com
        to: [ops@example.com]
    """
    path.write_text(textwrap.dedent(text) + textwrap.indent(textwrap.dedent(extra), "    "))
    return path


def mail_channel(path: Path) -> EmailChannel:
    config = load_notify_config(path, environ={})
    channel = build_channel("mail", config.channels["mail"], ChannelContext(http=None, environ={}))  # type: ignore[arg-type]
    assert isinstance(channel, EmailChannel)
    return channel


def test_shipped_email_renders_an_alert_without_description_or_runbook(tmp_path: Path) -> None:
    mail = mail_channel(config_with(tmp_path, ""))
    rendered = mail.render(Notification(alert=BARE))
    text = rendered.get_body(("plain",))
    assert text is not None
    assert "CPU 93% on web-1" in text.get_content() and "Runbook" not in text.get_content()


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("{{ titel }}", "unknown template variable titel"),
        ("{{ alerts[0].rulee }}", "has no attribute 'rulee'"),
        ("{% if kind %}x", "template error: Unexpected end of template"),
        ("{{ alerts[0].value + 1 }}", "template error"),  # value is None for some alerts
    ],
)
def test_template_mistakes_are_found_at_load_with_file_line_and_field(
    tmp_path: Path, subject: str, reason: str
) -> None:
    path = config_with(tmp_path, f"subject: {subject!r}\n")
    with pytest.raises(ConfigError) as caught:
        load_notify_config(path, environ={})
    assert str(caught.value).startswith(f"{path}:7: channels.mail.subject: ")
    assert reason in str(caught.value)


def test_missing_annotations_and_labels_read_as_empty(tmp_path: Path) -> None:
    subject = "{{ alerts[0].annotations.runbook_url or 'no runbook' }} {{ alerts[0].labels.team }}|"
    mail = mail_channel(config_with(tmp_path, f"subject: {subject!r}\n"))
    assert mail.render(Notification(alert=BARE))["Subject"] == "no runbook |"


def test_custom_body_templates_from_files(tmp_path: Path) -> None:
    (tmp_path / "body.txt.j2").write_text("{{ title }}: {% for a in alerts %}{{ summary(a) }}{% endfor %}\n")
    (tmp_path / "body.html.j2").write_text("<p>{{ alerts[0].annotations.description }}</p>\n")
    (tmp_path / "bad.txt.j2").write_text("{{ alerts[0].nope }}\n")
    good = f"text_template: {tmp_path / 'body.txt.j2'}\nhtml_template: {tmp_path / 'body.html.j2'}\n"
    mail = mail_channel(config_with(tmp_path, good))
    rendered = mail.render(Notification(alert=BARE))
    text, html = rendered.get_body(("plain",)), rendered.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "[FIRING] HighCPU on web-1 (high): CPU 93% on web-1\n"
    assert html.get_content() == "<p></p>\n"

    _, errors = check_notify_config(config_with(tmp_path, f"text_template: {tmp_path / 'bad.txt.j2'}\n"))
    assert len(errors) == 1 and "channels.mail.text_template: template error" in str(errors[0])
    _, errors = check_notify_config(config_with(tmp_path, "html_template: /nonexistent/t.j2\n"))
    assert "channels.mail.html_template: cannot read /nonexistent/t.j2" in str(errors[0])
