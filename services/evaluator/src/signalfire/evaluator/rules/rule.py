"""The compiled rule: what the engine, the state machine and the service run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2
import msgspec

from signalfire.evaluator.rules.conditions import Condition
from signalfire.evaluator.rules.matchers import Matcher, Selector
from signalfire.evaluator.rules.templates import MAX_ANNOTATION_CHARS
from signalfire.events import Severity

if TYPE_CHECKING:  # the spec modules build Rules: importing them here would be circular
    from signalfire.evaluator.rules.base import BaseRuleSpec


@dataclass(frozen=True, eq=False)
class Rule:
    """A validated, compiled rule: what the state machine and the service run."""

    name: str
    kind: str
    #: The metric a sample must have; empty for kinds without one (ratio, event_count, absent
    #: per host).
    metric: str
    where: tuple[Matcher, ...]
    #: What holds while the alert is active. For ``absent`` it is ``>= <for>`` on the seconds
    #: since the series was last seen.
    condition: Condition
    resolve: Condition
    #: How long ``condition`` must hold before firing (the state machine's ``for``); 0 for
    #: ``absent``, whose ``for`` is :attr:`silence`.
    for_: float
    severity: Severity
    labels: dict[str, str]
    annotations: dict[str, jinja2.Template]
    #: The rule as written: its kind's spec struct (``ThresholdSpec``, …).
    spec: BaseRuleSpec
    aggregate: str = "last"
    window: float = 0.0
    group_by: str = "series"
    numerator: Selector | None = None
    denominator: Selector | None = None
    event: str = ""
    alpha: float = 0.1
    warmup: int = 30
    #: ``absent``: seconds without data before the alert fires.
    silence: float = 0.0
    keep_firing_for: float = 0.0
    cooldown: float = 0.0
    #: Flap damping: more than ``flap_changes`` transitions within ``flap_window`` (0: off).
    flap_changes: int = 0
    flap_window: float = 0.0
    max_series: int | None = None
    #: The file the rule comes from, the line it starts on and its index in ``rules:``.
    source: str = ""
    line: int | None = None
    index: int = 0

    @property
    def origin(self) -> str:
        """``file:line`` where the rule is defined."""
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a series with these labels (``host`` included) is one this rule watches."""
        return all(m.matches(labels) for m in self.where)

    def render_annotations(self, context: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
        """Rendered annotations and the names of those that failed to render.

        A template that fails at run time (a filter given a wrong type, …) yields its raw
        text, so an alert always goes out; the caller counts the failures.
        """
        rendered: dict[str, str] = {}
        failed: list[str] = []
        for key, template in self.annotations.items():
            try:
                text = template.render(context)
            except Exception:  # any template error must not stop an alert
                text = self.spec.annotations[key]
                failed.append(key)
            rendered[key] = text[:MAX_ANNOTATION_CHARS]
        return rendered, failed

    def describe(self) -> dict[str, Any]:
        """The rule as written (JSON-ready), with its effective resolve condition and origin."""
        data: dict[str, Any] = msgspec.to_builtins(self.spec, enc_hook=_plain)
        data["kind"] = self.kind
        if self.kind != "absent":
            data["resolve"] = str(self.resolve)
        data["for"] = float(self.spec.for_)
        data["group_by"] = self.group_by
        if self.kind in ("threshold", "change"):
            data["aggregate"] = self.aggregate
        data["origin"] = self.origin
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, float):  # Duration
        return float(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")
