"""Conditions: the comparison a rule's value must pass (``condition: "> 80"``)."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_NEGATION = {">": "<=", ">=": "<", "<": ">=", "<=": ">", "==": "!=", "!=": "=="}
_CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Condition:
    """A comparison of a sample's value with a threshold: ``> 80``, ``<= 0.5``, ``!= 1``."""

    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.threshold)

    def negated(self) -> Condition:
        return Condition(_NEGATION[self.op], self.threshold)

    def overlaps(self, other: Condition) -> bool:
        """Whether some value satisfies both conditions.

        Both conditions change truth only at their thresholds, so testing the thresholds,
        the point between them and a point outside each end covers every region.
        """
        low, high = sorted((self.threshold, other.threshold))
        candidates = (low - 1.0, low, (low + high) / 2, high, high + 1.0)
        return any(self.holds(x) and other.holds(x) for x in candidates)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


def parse_condition(text: str) -> Condition:
    """``"> 80"`` → ``Condition(">", 80.0)``; raises ``ValueError`` saying what is expected."""
    match = _CONDITION.match(text)
    threshold = None
    if match:
        try:
            threshold = float(match.group(2))
        except ValueError:
            threshold = None
    if match is None or threshold is None or not math.isfinite(threshold):
        raise ValueError(
            f'expected an operator (>, >=, <, <=, ==, !=) and a number like "> 80", got {text!r}'
        )
    return Condition(match.group(1), threshold)
