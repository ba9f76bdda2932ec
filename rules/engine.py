"""The rule engine: object facts -> per-rule severities (pure functions).

Severity is graded so that scores rank well, not only pass/fail: for a numeric bound it is how far the
value goes towards (and past) the bound (``value / limit`` for ``<=``), so 1.0 is the bound itself and
anything above 1.0 is a violation; a categorical predicate (``in``, ``not_in``, ``==``, ``!=``) that fails
has severity ``CATEGORICAL_SEVERITY`` and one that holds has 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from anomalens.facts import CAPTION, FRAME_FACTS
from anomalens.types import Predicate, Rule, Rulebook

CATEGORICAL_OPS = frozenset({"in", "not_in", "==", "!="})
CATEGORICAL_SEVERITY = 2.0  # a broken categorical rule counts like a value at twice its bound
MAX_SEVERITY = 100.0  # past a hundred times its limit, how far past says nothing more (a limit of 0 is all or nothing)
_TINY = 1e-9


@dataclass(frozen=True)
class Check:
    rule: Rule
    severity: float

    @property
    def violated(self) -> bool:
        return self.severity > 1.0


def applies(predicate: Predicate, facts: Mapping[str, float | str | None]) -> bool:
    """True when the object has the fact (an object nothing named has no class) and matches every ``where``
    condition."""
    if facts.get(predicate.fact) is None:
        return False
    return all(str(facts.get(key)) == str(value) for key, value in predicate.where.items())


def severity(predicate: Predicate, value: float | str) -> float:
    op, bound = predicate.op, predicate.value
    if op in CATEGORICAL_OPS:
        options = [str(v) for v in bound] if isinstance(bound, list) else [str(bound)]
        holds = (str(value) in options) == (op in ("in", "=="))
        return 0.0 if holds else CATEGORICAL_SEVERITY
    value = float(value)
    if op in ("<=", "<"):
        return max(value, 0.0) / max(float(bound), _TINY)
    if op in (">=", ">"):
        return float(bound) / max(value, _TINY)
    low, high = (float(b) for b in bound)  # between
    return max(value / max(high, _TINY), low / max(value, _TINY))


def check(rules: Iterable[Rule], facts: Mapping[str, float | str]) -> list[Check]:
    """Every enabled rule in ``rules`` that applies to ``facts``, with its severity (at most ``MAX_SEVERITY``)."""
    return [
        Check(rule, min(severity(rule.predicate, facts[rule.predicate.fact]), MAX_SEVERITY))
        for rule in rules
        if rule.enabled and applies(rule.predicate, facts)
    ]


class RuleIndex:
    """A rulebook split for fast checking: frame-level rules once per frame, object rules by zone."""

    def __init__(self, rulebook: Rulebook):
        enabled = [r for r in rulebook.rules if r.enabled and r.predicate.fact != CAPTION]
        self.frame_rules = [r for r in enabled if r.predicate.fact in FRAME_FACTS]
        self._by_zone: dict[str | None, list[Rule]] = {}
        for rule in enabled:
            if rule.predicate.fact not in FRAME_FACTS:
                self._by_zone.setdefault(rule.predicate.where.get("zone"), []).append(rule)

    def object_rules(self, facts: Mapping[str, float | str]) -> list[Rule]:
        """Rules for one object: categorical ones (zones, directions) only once its track is established,
        so that a flickering blob or a one-frame heading cannot break them."""
        rules = self._by_zone.get(None, []) + self._by_zone.get(str(facts.get("zone")), [])
        if facts.get("established", True):
            return rules
        return [r for r in rules if r.predicate.op not in CATEGORICAL_OPS]
