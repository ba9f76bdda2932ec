"""Caption scoring, the cheap stage of caption reasoning: every frame's caption -> short phrases -> two cues.

- **rule**: each phrase is matched by meaning (sentence embeddings) against the phrases of the rulebook's
  caption rules; its score is how much closer it lies to the nearest anomaly phrase than to the nearest
  normal one (``margin``, clipped at 0), and that anomaly rule is the one the frame would violate. An anomaly
  rule's alternative that lies nearer a normal phrase than its own rule is set aside (``SetAside``).
- **novelty**: self-referenced normality, for anomalies no rule foresaw: how rarely the footage's own
  captions describe the activity (``-log(share of captions describing it) / log(captions)``, in [0, 1]).

A frame's score is ``(1 - NOVELTY_WEIGHT) * rule + NOVELTY_WEIGHT * novelty``, maximised over its phrases.
Phrases repeat across frames, so each distinct phrase is embedded once.

Phrases are the activities a caption names (an ``-ing`` verb with the few words after it: "riding a
bicycle") and the objects it lists ("Other than people, there are trees, a bicycle"); a caption with
neither is split into clauses.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from anomalens.errors import ConfigError
from anomalens.rules.captions import caption_rules
from anomalens.tools.embeddings import SentenceEmbedder
from anomalens.types import Predicate, Rule, Rulebook

# A quarter of the weight to novelty: chosen on ShanghaiTech's captions among 0.25, 0.5 and 0.75 (the LLM off)
# and used unchanged on every dataset (see eval/captions.py).
NOVELTY_WEIGHT = 0.25

_LINKS = r"a|an|the|on|up|down|with|in|into|across|around|at|over|his|her|their|some|to|towards|from|away"
_ACTIVITY = re.compile(rf"\b([a-z]+ing)\b((?:\s+(?:{_LINKS})\b)*(?:\s+[a-z]+)?)")
# -ing words that are nouns or pronouns, not activities.
_NOT_ACTIVITIES = frozenset(
    {
        "something",
        "nothing",
        "anything",
        "everything",
        "building",
        "clothing",
        "ceiling",
        "railing",
        "thing",
        "evening",
        "morning",
        "string",
        "ring",
        "king",
        "wing",
        "spring",
        "parking",
        "painting",
        "sibling",
    }
)
_OBJECT_LIST = re.compile(r"(?:other than|apart from|besides|aside from)[^,.]*?,?\s*there (?:are|is|'s)\s+([^.]*)")
_LIST_SEPARATOR = re.compile(r",\s*(?:and\s+)?|\s+and\s+")
_CLAUSE = re.compile(r"(?<=[.;!?])\s+|,\s+")
_MAX_OBJECT_WORDS = 10
MIN_NORMAL_SHARE = 0.02  # a phrase said in 2% of normal captions describes normal activity
SAME_MEANING = 0.8  # cosine above which two phrases say the same thing (MiniLM: "riding a bike"/"riding a bicycle")


def activities(caption: str) -> list[tuple[str, str]]:
    """(verb, phrase) for each activity the caption names: ("riding", "riding a bicycle")."""
    out = []
    for match in _ACTIVITY.finditer(caption.lower()):
        if match.group(1) not in _NOT_ACTIVITIES:
            out.append((match.group(1), (match.group(1) + match.group(2)).strip()))
    return out


def phrases(caption: str) -> list[str]:
    """The activities and listed objects of a caption, without duplicates; its clauses when it has neither."""
    found = [phrase for _, phrase in activities(caption)]
    for listing in _OBJECT_LIST.finditer(caption.lower()):
        for item in _LIST_SEPARATOR.split(listing.group(1)):
            item = item.strip()
            if item and len(item.split()) <= _MAX_OBJECT_WORDS:
                found.append(item)
    if not found:
        found = [c.strip(" .").lower() for c in _CLAUSE.split(caption) if len(c.strip(" .")) > 2]
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class PhraseMatch:
    """Where a phrase lies between the rulebook's anomaly and normal phrases."""

    phrase: str
    margin: float  # best anomaly similarity - best normal similarity (cosine); > 0: closer to an anomaly
    rule_id: str  # the anomaly rule whose phrase is nearest
    judged_by: str = "embedding"  # or the LLM that decided it ("llamacpp:qwen2.5-coder-1.5b")

    @property
    def score(self) -> float:
        return min(max(self.margin, 0.0), 1.0)

    def decided(self, rule_id: str | None, judge: str) -> PhraseMatch:
        """Settled by ``judge``: it fits anomaly rule ``rule_id`` (the margin stays, the rule is the judge's),
        or (None) a normal rule, which clears it. A judge may clear a phrase but not raise its score: on
        ShanghaiTech the embedded 1.5B model's "anomalous" verdicts, raised to 1, cost 0.03 AUROC."""
        if rule_id is None:
            return replace(self, margin=0.0, judged_by=judge)
        return replace(self, rule_id=rule_id, judged_by=judge)


@dataclass
class FrameScores:
    """One video's per-frame cues; ``phrase[k]``/``rule_id[k]`` explain frame k's rule score (None: no rule)."""

    rule: np.ndarray
    novelty: np.ndarray
    phrase: list[str | None]
    rule_id: list[str | None]

    @property
    def raw(self) -> np.ndarray:
        return (1 - NOVELTY_WEIGHT) * self.rule + NOVELTY_WEIGHT * self.novelty


@dataclass(frozen=True)
class SetAside:
    """An anomaly rule's alternative that lies nearer a normal rule than its own rule's sentence: splitting the
    rule cut off the words that made it anomalous ("trees" from "Damaged manhole cover or trees", beside the
    normal "Trees along the street"), so it is not matched."""

    phrase: str
    rule_id: str
    nearest_normal: str


class CaptionScorer:
    def __init__(self, rulebook: Rulebook, embedder: SentenceEmbedder):
        anomaly, normal = caption_rules(rulebook)
        if not anomaly or not normal:
            raise ConfigError(
                f"rulebook {rulebook.scene or '(unnamed)'}: caption scoring needs caption rules of both kinds "
                f"(anomaly rules: {len(anomaly)}, normal rules: {len(normal)})"
            )
        self.embedder = embedder
        self._rules = anomaly + normal
        self._rule_vectors = embedder.embed([r.sentence for r in self._rules])
        normal_phrases = [p for rule in normal for p in rule.predicate.value]
        self._normal_vectors = embedder.embed(normal_phrases)
        self._anomaly, self.set_aside = self._anomaly_phrases(anomaly, normal_phrases)
        self._anomaly_vectors = embedder.embed([p for p, _ in self._anomaly])

    def _anomaly_phrases(
        self, anomaly: list[Rule], normal_phrases: list[str]
    ) -> tuple[list[tuple[str, str]], list[SetAside]]:
        """(phrase, rule id) for every alternative of the anomaly rules nearer its own rule's sentence than any
        normal phrase; a rule with none such is matched by its whole sentence."""
        listed = [(phrase, k) for k, rule in enumerate(anomaly) for phrase in rule.predicate.value]
        vectors = self.embedder.embed([p for p, _ in listed])
        sentences = self._rule_vectors[: len(anomaly)]  # the anomaly rules come first in self._rules
        to_own = np.einsum("ij,ij->i", vectors, sentences[[k for _, k in listed]])
        to_normal = vectors @ self._normal_vectors.T
        kept: dict[int, list[str]] = {}
        set_aside = []
        for i, (phrase, k) in enumerate(listed):
            if to_own[i] > to_normal[i].max():
                kept.setdefault(k, []).append(phrase)
            else:
                set_aside.append(SetAside(phrase, anomaly[k].id, normal_phrases[int(to_normal[i].argmax())]))
        phrases = [(p, rule.id) for k, rule in enumerate(anomaly) for p in kept.get(k, [rule.sentence])]
        return phrases, set_aside

    def match(self, texts: list[str], progress: bool = False) -> dict[str, PhraseMatch]:
        """Each distinct phrase in ``texts`` -> its ``PhraseMatch``."""
        unique = list(dict.fromkeys(texts))
        vectors = self.embedder.embed(unique, progress=progress)
        to_anomaly = vectors @ self._anomaly_vectors.T
        to_normal = (vectors @ self._normal_vectors.T).max(axis=1)
        nearest = to_anomaly.argmax(axis=1)
        return {
            text: PhraseMatch(text, float(to_anomaly[i, nearest[i]] - to_normal[i]), self._anomaly[nearest[i]][1])
            for i, text in enumerate(unique)
        }

    def sentence(self, rule_id: str) -> str:
        return next(rule.sentence for rule in self._rules if rule.id == rule_id)

    def nearest_rules(self, phrase: str, per_kind: int) -> list[Rule]:
        """The ``per_kind`` anomaly rules and ``per_kind`` normal rules whose sentences lie nearest to ``phrase``."""
        similarity = self._rule_vectors @ self.embedder.embed([phrase])[0]
        order = [self._rules[i] for i in np.argsort(-similarity, kind="stable")]
        anomaly = [r for r in order if r.kind == "anomaly"][:per_kind]
        return anomaly + [r for r in order if r.kind == "normal"][:per_kind]


@dataclass
class ReadCaptions:
    """Captions read once: each frame's phrases and novelty, per video (neither depends on the rules)."""

    phrases: dict[str, list[list[str]]]
    novelty: dict[str, np.ndarray]


def read_captions(captions: dict[str, list[str]]) -> ReadCaptions:
    """Phrases of every caption, and novelty counted over all ``captions`` given (every video together)."""
    described = {v: [{verb for verb, _ in activities(c)} for c in caps] for v, caps in captions.items()}
    frames = sum(len(caps) for caps in captions.values())
    share = Counter(verb for verbs in described.values() for found in verbs for verb in found)
    scale = math.log(max(frames, 2))
    novelty = {
        video: np.array([max((-math.log(share[v] / frames) for v in found), default=0.0) / scale for found in verbs])
        for video, verbs in described.items()
    }
    return ReadCaptions({v: [phrases(c) for c in caps] for v, caps in captions.items()}, novelty)


def frame_scores(read: ReadCaptions, matches: dict[str, PhraseMatch]) -> dict[str, FrameScores]:
    """Per video: each frame's best rule match (by score) beside its novelty."""
    out = {}
    for video, per_frame in read.phrases.items():
        rule = np.zeros(len(per_frame))
        phrase: list[str | None] = [None] * len(per_frame)
        rule_id: list[str | None] = [None] * len(per_frame)
        for k, found in enumerate(per_frame):
            best = max((matches[p] for p in found), key=lambda m: m.score, default=None)
            if best is not None and best.score > 0:
                rule[k], phrase[k], rule_id[k] = best.score, best.phrase, best.rule_id
        out[video] = FrameScores(rule, read.novelty[video], phrase, rule_id)
    return out


def induce_caption_rules(
    normal_captions: list[str], embedder: SentenceEmbedder, anomalies: Rulebook, scene: str = ""
) -> Rulebook:
    """Caption rules for a scene from captions of its normal footage.

    Normal rules: the phrases said in at least ``MIN_NORMAL_SHARE`` of the captions, grouped by their first
    word ("walking" -> "walking with a bag", "walking towards the door"). Anomaly rules: those of ``anomalies``
    (e.g. ``rules/everyday_anomalies.txt``), each switched off when the normal footage says one of its phrases
    (a frequent normal phrase within ``SAME_MEANING`` cosine of it): here, that is normal."""
    if not normal_captions:
        raise ConfigError("inducing caption rules needs captions of normal footage; none were given")
    said = Counter(p for caption in normal_captions for p in set(phrases(caption)))
    frequent = sorted(
        (p for p, n in said.items() if n >= MIN_NORMAL_SHARE * len(normal_captions)), key=lambda p: (-said[p], p)
    )
    if not frequent:
        raise ConfigError(
            f"no phrase is said in {MIN_NORMAL_SHARE:.0%} of the {len(normal_captions)} normal captions: "
            "nothing to call normal"
        )
    groups: dict[str, list[str]] = {}
    for phrase in frequent:
        groups.setdefault(phrase.split()[0], []).append(phrase)
    rules = [
        Rule(
            id=f"normal-{k}",
            kind="normal",
            sentence=f"Normal here: {', '.join(members)}",
            predicate=Predicate(fact="caption", op="in", value=members),
            stats={"share_of_normal_captions": max(said[m] for m in members) / len(normal_captions)},
        )
        for k, members in enumerate(groups.values(), 1)
    ]
    normal_vectors = embedder.embed(frequent)
    for rule in caption_rules(anomalies)[0]:
        similarity = embedder.embed(rule.predicate.value) @ normal_vectors.T
        i, j = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        seen = similarity[i, j] >= SAME_MEANING
        stats = {"nearest_normal_similarity": float(similarity[i, j])}
        if seen:
            stats["share_of_normal_captions"] = said[frequent[j]] / len(normal_captions)
        rules.append(rule.model_copy(update={"enabled": not seen, "stats": stats}))
    return Rulebook(scene=scene, induced_from=[f"{len(normal_captions)} normal captions"], rules=rules)
