"""The rule kinds this evaluator runs: the tagged union a rule is decoded into.

Adding a kind means one new module with its spec struct (a :class:`BaseRuleSpec` subclass
with its ``tag``, its fields and its ``compile``) and one member in :data:`RuleSpec`; the
engine then needs its branch for the new kind.
"""

from __future__ import annotations

from typing import get_args

import msgspec

from signalfire.evaluator.rules.absent import AbsentSpec
from signalfire.evaluator.rules.anomaly import AnomalySpec
from signalfire.evaluator.rules.base import BaseRuleSpec
from signalfire.evaluator.rules.change import ChangeSpec
from signalfire.evaluator.rules.event_count import EventCountSpec
from signalfire.evaluator.rules.ratio import RatioSpec
from signalfire.evaluator.rules.threshold import ThresholdSpec

#: One rule as written, chosen by its ``kind:``. The order is the order messages list kinds in.
RuleSpec = ThresholdSpec | ChangeSpec | AnomalySpec | RatioSpec | EventCountSpec | AbsentSpec

#: The kind a rule without ``kind:`` has.
DEFAULT_KIND = "threshold"

#: ``kind`` → its spec struct.
SPECS: dict[str, type[BaseRuleSpec]] = {str(spec.__struct_config__.tag): spec for spec in get_args(RuleSpec)}

#: Rule kinds this evaluator runs; :mod:`signalfire.evaluator.engine` has one branch each.
KINDS: tuple[str, ...] = tuple(SPECS)


def field_names(spec: type[BaseRuleSpec]) -> tuple[str, ...]:
    """The keys a rule of this kind takes, as written: the common ones around its own."""
    common = [f.encode_name for f in msgspec.structs.fields(BaseRuleSpec)]
    own = [f.encode_name for f in msgspec.structs.fields(spec) if f.encode_name not in common]
    return ("name", "severity", "kind", *own, *(name for name in common if name not in ("name", "severity")))


def kinds_taking(key: str) -> tuple[str, ...]:
    """The kinds whose rules take ``key`` (empty for a key no kind takes)."""
    return tuple(kind for kind, spec in SPECS.items() if key in field_names(spec))
