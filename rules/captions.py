"""Caption rules as data: rule text written by a person or an LLM (AnomalyRuler's ``published_rules.txt``
layout) parsed into a ``Rulebook`` of ``caption`` rules.

The text has section headings and numbered (or bulleted) items under them::

    **Anomaly Human Activities:**
    1. Running or jumping
    **Rules for Normal Human Activities:**
    1. Walking alone or with another person

A heading that mentions "anomal" opens anomaly rules, one that mentions "normal" opens normal ones. An
anomaly item becomes a rule of kind ``anomaly`` with ``caption not_in [its phrases]`` (normal footage does not
describe them); a normal item one of kind ``normal`` with ``caption in [its phrases]``. Its phrases are the
alternatives the item lists ("Running or jumping"
-> "Running", "jumping"), which the caption scorer matches by meaning.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from anomalens.errors import ConfigError
from anomalens.files import read_text
from anomalens.types import Predicate, Rule, Rulebook

_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$")
# Where an item lists alternatives: "A or B", "A, B", "such as A", "(A)", "A/B".
_ALTERNATIVES = re.compile(r",|;|\(|\)|/|\bor\b|\bsuch as\b|\bincluding\b|\betc\b\.?|\be\.g\.", re.IGNORECASE)


def phrases_of(item: str) -> list[str]:
    """The alternatives an item lists, in order, without duplicates: "Ground transportations such as vehicles,
    vans, bicycles." -> ["Ground transportations", "vehicles", "vans", "bicycles"]."""
    out: list[str] = []
    for part in _ALTERNATIVES.split(item):
        phrase = part.strip(" .:-\t")
        if len(phrase) >= 3 and phrase.lower() not in (p.lower() for p in out):
            out.append(phrase)
    return out or [item.strip()]


def parse_rule_text(text: str, source: str = "rules") -> Rulebook:
    """Rule text -> a ``Rulebook`` of caption rules with ids ``anomaly-1``.. and ``normal-1``.. in order.

    Raises ``ConfigError`` naming ``source`` and the line for an item outside any section, a heading that is
    neither about anomalies nor about normal behaviour, or a text with no anomaly rule."""
    rules: list[Rule] = []
    kind: str | None = None
    counts = {"anomaly": 0, "normal": 0}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item = _ITEM.match(line)
        if item is None:
            heading = line.strip().strip("*#: ").lower()
            if "anomal" in heading or "abnormal" in heading:
                kind = "anomaly"
            elif "normal" in heading:
                kind = "normal"
            else:
                raise ConfigError(
                    f"{source}:{number}: {line.strip()!r} is neither a numbered rule nor a heading that says "
                    "'anomaly' or 'normal'"
                )
            continue
        if kind is None:
            raise ConfigError(f"{source}:{number}: rule {item.group(1)!r} comes before any anomaly/normal heading")
        counts[kind] += 1
        sentence = item.group(1)
        rules.append(
            Rule(
                id=f"{kind}-{counts[kind]}",
                kind=kind,
                origin="written",
                sentence=sentence,
                predicate=Predicate(
                    fact="caption", op="not_in" if kind == "anomaly" else "in", value=phrases_of(sentence)
                ),
            )
        )
    if not counts["anomaly"]:
        raise ConfigError(f"{source}: no anomaly rules (a heading with 'anomaly' followed by numbered items)")
    return Rulebook(scene=Path(source).parent.name, induced_from=[source], rules=rules)


def load_rule_text(path: str | Path) -> Rulebook:
    path = Path(path)
    return parse_rule_text(read_text(path, "rule text"), str(path))


def everyday_anomalies() -> Rulebook:
    """The anomalies of most public scenes that anomalens ships (``everyday_anomalies.txt``), as caption rules."""
    text = resources.files("anomalens.rules").joinpath("everyday_anomalies.txt").read_text(encoding="utf-8")
    return parse_rule_text(text, "everyday_anomalies.txt")


def caption_rules(rulebook: Rulebook) -> tuple[list[Rule], list[Rule]]:
    """The enabled caption rules of ``rulebook``: (anomaly rules, normal rules)."""
    enabled = [r for r in rulebook.rules if r.enabled and r.predicate.fact == "caption"]
    return [r for r in enabled if r.kind == "anomaly"], [r for r in enabled if r.kind == "normal"]
