"""Jinja2 templates for notification text (the email bodies and subject), strict where the
template is wrong and tolerant where the alert simply lacks something.

- **Strict about the template**: an unknown variable (``{{ titel }}``), a misspelled alert
  field (``alert.rulee``) or a syntax error is an error. :func:`compile_template` finds it when
  the config is loaded (``signalfire notify check``, start-up, reload) by parsing the
  template and rendering it against sample notifications of every kind, not at send time.
- **Tolerant of alerts**: ``alert.annotations`` and ``alert.labels`` are mappings that may
  lack any key; a missing one reads as the empty string, so ``{% if
  alert.annotations.runbook_url %}`` works for rules without a runbook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import msgspec
from jinja2.sandbox import SandboxedEnvironment

from signalfire.events import AlertEvent
from signalfire.notifier.channels import message
from signalfire.notifier.channels.base import Notification

#: What a notification template may use, and what each is.
TEMPLATE_VARIABLES: dict[str, str] = {
    "title": "the message title, e.g. [FIRING] HighCPU on web-1 (high)",
    "alerts": "the alerts the message covers (one, or all of a group or digest)",
    "kind": "firing, resolved, acknowledged, repeat, escalation or test",
    "digest": "true for a digest message",
    "colour": "the severity colour (#rrggbb; green when resolved)",
    "channel": "the channel's name",
    "test": "true for signalfire notify test",
    "summary": "summary(alert): the summary annotation, or '<rule> on <host>'",
    "facts": "facts(alert): (name, value) pairs worth showing (severity, host, value, ...)",
    "state": "state(alert): 'firing', 'resolved', or 'fired and resolved' in a digest",
}


class Annotations(dict[str, str]):
    """An alert's annotations or labels in a template: a key it does not have reads as ``""``."""

    def __missing__(self, key: str) -> str:
        return ""


class TemplateProblem(ValueError):
    """A template that cannot be used; the message says what is wrong and where."""


def environment(loader: jinja2.BaseLoader | None = None, *, html: bool = False) -> SandboxedEnvironment:
    """The environment notification templates render in: sandboxed, ``StrictUndefined``
    (a mistake in the template is an error), HTML-escaped when ``html``."""
    env = SandboxedEnvironment(
        loader=loader,
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.globals.update(summary=message.summary, facts=message.facts)
    return env


def context(notification: Notification, channel: str) -> dict[str, Any]:
    """The variables a template is rendered with (:data:`TEMPLATE_VARIABLES`)."""
    alerts = [
        msgspec.structs.replace(a, annotations=Annotations(a.annotations), labels=Annotations(a.labels))
        for a in notification.covered
    ]

    def state(alert: AlertEvent) -> str:
        return message.state(alert, notification)

    return {
        "title": message.title(notification),
        "alerts": alerts,
        "kind": notification.kind,
        "digest": notification.digest,
        "colour": message.colour(notification),
        "channel": channel,
        "test": notification.test,
        "state": state,
    }


def samples() -> list[Notification]:
    """Notifications of every shape a template must render: one alert without annotations or
    labels, one with everything, a resolved one, a group, a digest with a fired-and-resolved
    alert, an acknowledgement and a test."""
    bare = AlertEvent(
        id="sample-1",
        fingerprint="sample",
        rule="SampleRule",
        status="firing",
        severity="high",
        host="host-1",
        starts_at=1_700_000_000.0,
        time=1_700_000_000.0,
    )
    full = msgspec.structs.replace(
        bare,
        id="sample-2",
        labels={"team": "ops"},
        annotations={"summary": "s", "description": "d", "runbook_url": "https://example.com/runbook"},
        value=1.0,
        threshold=0.5,
    )
    resolved = msgspec.structs.replace(full, id="sample-3", status="resolved", ends_at=1_700_000_060.0)
    return [
        Notification(alert=bare),
        Notification(alert=full),
        Notification(alert=resolved),
        Notification(alert=bare, transition="repeat"),
        Notification(alert=full, transition="escalation"),
        Notification(alert=full, transition="acknowledged"),
        Notification(alert=bare, alerts=(bare, full)),
        Notification(alert=bare, alerts=(bare, resolved), digest=True),
        Notification(alert=bare, test=True),
    ]


def compile_template(env: SandboxedEnvironment, source: str, name: str) -> jinja2.Template:
    """``source`` compiled in ``env`` and proven to render every sample notification.

    Raises :class:`TemplateProblem` for a syntax error (with the template's line), a
    variable that is not in :data:`TEMPLATE_VARIABLES`, or an error while rendering (a
    misspelled alert field: ``'AlertEvent object' has no attribute 'rulee'``).
    """
    try:
        parsed = env.parse(source, name=name)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template error: {exc.message} (template line {exc.lineno})") from None
    unknown = sorted(jinja2.meta.find_undeclared_variables(parsed) - set(TEMPLATE_VARIABLES))
    if unknown:
        raise TemplateProblem(
            f"unknown template variable {', '.join(unknown)}; templates may use "
            f"{', '.join(TEMPLATE_VARIABLES)}"
        )
    template = env.from_string(source)
    for sample in samples():
        try:
            template.render(context(sample, "sample"))
        except jinja2.TemplateError as exc:
            raise TemplateProblem(f"template error: {exc.message or exc}") from None
        except Exception as exc:  # a filter given the wrong type, a division by zero, ...
            raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}") from None
    return template


def load_template(path: str, *, html: bool) -> jinja2.Template:
    """The template in file ``path`` (see :func:`compile_template`); :class:`TemplateProblem`
    when it cannot be read or used."""
    try:
        source = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TemplateProblem(f"{path} is not UTF-8 text") from None
    return compile_template(environment(html=html), source, path)


def render(template: jinja2.Template, notification: Notification, channel: str) -> str:
    """``template`` rendered for ``notification``."""
    return template.render(context(notification, channel))
