"""A person's "false alarm" turned into a rule change, and events re-scored under a changed rulebook (pure functions).

An event keeps the facts of everything that broke a rule in it (``breach_facts``): the object's class, zone,
heading and measured sizes and speeds, or the frame's count and occupancy. ``propose`` changes each broken rule
just enough that none of those facts breaks it again: a limit raised (or lowered) 5% past the worst value seen, a
class, heading or zone added to the allowed ones, a forbidden zone allowed. ``still_broken`` checks stored facts
against a rulebook, which is how every stored event of the scene is re-scored once a change is accepted.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from anomalens.facts import CAPTION, FRAME_FACTS, OBJECT_FACTS
from anomalens.rules.engine import check
from anomalens.rules.io import rulebook_text
from anomalens.types import Evidence, Rule, Rulebook

SLACK = 1.05  # a raised limit clears the worst value seen by 5%


def breach_facts(evidence: Evidence) -> list[dict]:
    """One entry per rule ``evidence`` records broken: ``{"rule", "frame", "track", "facts"}`` with the facts of
    the object that broke it (or of the frame, for a frame rule)."""
    found = []
    for breach in evidence.breaches():
        i = breach.object_index
        names = FRAME_FACTS if i is None else OBJECT_FACTS
        facts = {name: value for name in names if (value := evidence.fact(name, i)) is not None}
        found.append(
            {"rule": breach.rule_id, "frame": evidence.frame_index, "track": evidence.track_of(breach.object_index),
             "facts": facts}
        )
    return found


def still_broken(rulebook: Rulebook, breaches: list[dict]) -> list[str]:
    """The rules of ``rulebook`` that the stored ``breaches`` (of ``breach_facts``) still break, sorted."""
    broken = set()
    for breach in breaches:
        broken |= {c.rule.id for c in check(rulebook.rules, breach["facts"]) if c.violated}
    return sorted(broken)


@dataclass(frozen=True)
class Change:
    rule_id: str
    said: str  # what changes, in words


@dataclass(frozen=True)
class Proposal:
    changes: list[Change]
    rulebook: Rulebook  # the rulebook with the changes made
    diff: str  # unified diff of rules.yaml, now -> proposed
    unchanged: list[str]  # broken rules no change can touch (caption rules, rules no longer in the rulebook)


def propose(rulebook: Rulebook, breaches: list[dict]) -> Proposal:
    """The smallest change to ``rulebook`` under which none of ``breaches`` breaks a rule."""
    by_rule: dict[str, list[float | str]] = {}
    for breach in breaches:
        rule = rulebook.find(breach["rule"])
        if rule is not None and rule.predicate.fact in breach["facts"]:
            by_rule.setdefault(rule.id, []).append(breach["facts"][rule.predicate.fact])
    changes, rules, unchanged = [], [], sorted({b["rule"] for b in breaches} - set(by_rule))
    for rule in rulebook.rules:
        values = by_rule.get(rule.id)
        if values is None or not rule.enabled:
            rules.append(rule)
            continue
        changed, said = _loosened(rule, values)
        if changed is None:
            unchanged.append(rule.id)
            rules.append(rule)
        else:
            changes.append(Change(rule.id, said))
            rules.append(changed)
    proposed = rulebook.model_copy(update={"rules": rules})
    before, after = rulebook_text(rulebook), rulebook_text(proposed)
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), "rules.yaml (now)",
            "rules.yaml (proposed)", n=2,
        )
    )
    return Proposal(changes, proposed, diff, sorted(unchanged))


def _loosened(rule: Rule, values: list[float | str]) -> tuple[Rule | None, str]:
    """``rule`` changed so that every value holds, and the change in words; (None, why) when it cannot be."""
    predicate, op = rule.predicate, rule.predicate.op
    if predicate.fact == CAPTION:
        return None, "caption rules are judged by meaning; edit their phrases in rules.yaml"
    unit = f" {predicate.unit}" if predicate.unit else ""
    if op in ("<=", "<", "between") and all(isinstance(v, (int, float)) for v in values):
        worst = max(float(v) for v in values)
        old = float(predicate.value[1] if op == "between" else predicate.value)
        new = float(math.ceil(worst)) if predicate.fact == "count" else _round_up(max(worst * SLACK, old))
        value = [predicate.value[0], new] if op == "between" else new
        said = f"raise the limit of {rule.id} from {_number(old)} to {_number(new)}{unit}"
        sentence = _renumbered(rule.sentence, old, new)
    elif op in (">=", ">") and all(isinstance(v, (int, float)) for v in values):
        worst = min(float(v) for v in values)
        old = float(predicate.value)
        new = _round_down(min(worst / SLACK, old))
        value = new
        said = f"lower the limit of {rule.id} from {_number(old)} to {_number(new)}{unit}"
        sentence = _renumbered(rule.sentence, old, new)
    elif op == "in":
        added = sorted({str(v) for v in values} - {str(v) for v in predicate.value})
        value = [*predicate.value, *added]
        said = f"allow {' and '.join(added)} in {rule.id}"
        sentence = f"{rule.sentence.rstrip('.')}; {', '.join(added)} allowed after review."
    elif op == "not_in":
        removed = {str(v) for v in values}
        value = [v for v in predicate.value if str(v) not in removed]
        said = f"stop forbidding {' and '.join(sorted(removed))} in {rule.id}"
        sentence = f"{rule.sentence.rstrip('.')} ({', '.join(sorted(removed))} allowed after review)."
    else:  # == and !=: e.g. "nothing enters zone r0c3": allowing the value is switching the rule off
        return rule.model_copy(update={"enabled": False}), f"switch off {rule.id} ({_what_it_forbids(rule)} allowed)"
    changed = predicate.model_copy(update={"value": value})
    return rule.model_copy(update={"predicate": changed, "sentence": sentence}), said


def _what_it_forbids(rule: Rule) -> str:
    return f"{rule.predicate.fact} {rule.predicate.value}"


def _round_up(value: float) -> float:
    """``value`` rounded up to three significant digits, so the YAML stays readable and the limit still clears."""
    return _three_digits(value, math.ceil)


def _round_down(value: float) -> float:
    return _three_digits(value, math.floor)


def _three_digits(value: float, direction) -> float:
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return round(direction(round(value / step, 6)) * step, 10)


def _number(value: float) -> str:
    return f"{value:g}"


def _renumbered(sentence: str, old: float, new: float) -> str:
    """The rule's sentence with its number changed, in the format it was written in, else a note appended."""
    for fmt in ("{:.2f}", "{:.1f}", "{:.0f}", "{:g}"):
        written = re.compile(rf"(?<![\d.]){re.escape(fmt.format(old))}(?![\d])")
        if written.search(sentence):
            return written.sub(fmt.format(new), sentence, count=1)
    return f"{sentence.rstrip('.')} (limit {_number(new)} after review)."
