"""Annotation templates: Jinja2 in a sandbox, checked for syntax and variables at load time."""

from __future__ import annotations

from collections.abc import Mapping

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

#: Variables a template may use; anything else is a load error (a typo would render empty).
TEMPLATE_VARIABLES: tuple[str, ...] = ("value", "threshold", "host", "labels", "rule")

#: AlertEvent annotations are capped at this many characters (see ``signalfire.events``).
MAX_ANNOTATION_CHARS = 16384


def template_environment() -> SandboxedEnvironment:
    """The sandbox annotations render in: no attribute access to internals, no I/O."""
    return SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


def compile_templates(
    texts: Mapping[str, str], env: SandboxedEnvironment
) -> tuple[dict[str, jinja2.Template], dict[str, str]]:
    """The compiled templates of ``texts`` and, by key, why each bad one was refused.

    A template with a variable outside :data:`TEMPLATE_VARIABLES` is refused but compiled
    all the same; the caller does not use the result when any error was found.
    """
    templates: dict[str, jinja2.Template] = {}
    errors: dict[str, str] = {}
    for key, text in texts.items():
        try:
            unknown = sorted(jinja2.meta.find_undeclared_variables(env.parse(text)) - set(TEMPLATE_VARIABLES))
            templates[key] = env.from_string(text)
        except jinja2.TemplateSyntaxError as exc:
            errors[key] = f"template error: {exc.message} (template line {exc.lineno})"
            continue
        if unknown:
            errors[key] = (
                f"unknown template variable {', '.join(unknown)}; "
                f"templates may use {', '.join(TEMPLATE_VARIABLES)}"
            )
    return templates, errors
