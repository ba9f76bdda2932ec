"""Caption reasoning: per-frame anomaly scores for captioned video, each with the caption rule it breaks.

A cascade. Every caption is scored cheaply (``tools.caption_scoring``: phrases matched by meaning against
the rules, plus novelty). Captions repeat the same phrases frame after frame, so the LLM judges *phrases*,
not frames: the phrases that lean towards an anomaly rule, the ones that decide the most frames first, up
to a budget of ``llm_fraction`` of the frame count. It chooses the rule a phrase fits best among the nearest
anomaly and normal rules; choosing a normal rule clears the phrase in every frame that says it, choosing an
anomaly rule names the rule those frames break. Scores are then smoothed over time within each video.
"""

from __future__ import annotations

import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import create_model

from anomalens.agents.llm import LLM, Message, ask_structured
from anomalens.errors import LLMError
from anomalens.events import group_events, smooth
from anomalens.progress import track
from anomalens.prompts import load as load_prompts
from anomalens.tools.caption_scoring import CaptionScorer, FrameScores, PhraseMatch, frame_scores, read_captions
from anomalens.tools.captions import ReplayedCaptions
from anomalens.types import Event

# At most this share of the frame count in LLM calls; 1% keeps ShanghaiTech's 40,791 frames at 407 calls,
# about 17 minutes with the embedded 1.5B model on two cores.
DEFAULT_LLM_FRACTION = 0.01
# Centred moving average over 31 frames (about a second at 25-30 fps); chosen on ShanghaiTech among 11, 21
# and 31 with the LLM off, and used unchanged on every dataset (see eval/captions.py).
SMOOTHING_WIDTH = 31
# A frame is anomalous above this smoothed score: ShanghaiTech's best-F1 threshold (0.101, F1 0.73 with the
# default LLM share), the same everywhere.
EVENT_THRESHOLD = 0.10
LLM_ATTEMPTS = 2
CHOICES_PER_KIND = 3  # the LLM chooses among the 3 nearest anomaly rules and the 3 nearest normal rules
LETTERS = "ABCDEFGHIJ"


@dataclass
class VideoScores:
    scores: np.ndarray  # smoothed, per frame
    cues: FrameScores  # the unsmoothed cues and the rule behind each frame's rule score
    embedding_only: np.ndarray  # smoothed scores before the LLM's verdicts, to measure what it adds


@dataclass
class CaptionReasoning:
    videos: dict[str, VideoScores]
    phrases: int  # distinct phrases scored
    decided: list[PhraseMatch] = field(default_factory=list)  # the phrases the LLM judged
    llm_calls: int = 0
    llm: str | None = None
    seconds: float = 0.0

    @property
    def frames(self) -> int:
        return sum(len(v.scores) for v in self.videos.values())

    def decisions(self) -> list[dict]:
        """The LLM's verdicts as JSON: each phrase, whether it stayed anomalous, under which rule, by whom."""
        return [
            {"phrase": m.phrase, "anomalous": m.margin > 0, "rule": m.rule_id, "judge": m.judged_by}
            for m in self.decided
        ]

    def to_json(self) -> dict:
        return {
            "frames": self.frames,
            "phrases": self.phrases,
            "llm": self.llm,
            "llm_calls": self.llm_calls,
            "decided": self.decisions(),
            "videos": {
                name: {
                    "scores": [round(float(s), 5) for s in video.scores],
                    "rules": video.cues.rule_id,
                    "phrases": video.cues.phrase,
                }
                for name, video in self.videos.items()
            },
        }


def reason_over_captions(
    captions: dict[str, list[str]],
    scorer: CaptionScorer,
    llm: LLM | None = None,
    *,
    llm_fraction: float = DEFAULT_LLM_FRACTION,
    progress: bool = True,
) -> CaptionReasoning:
    """``captions``: video name -> one caption per frame. Novelty counts over all the videos given."""
    if not 0 <= llm_fraction <= 1:
        raise ValueError(f"llm_fraction must lie in [0, 1], got {llm_fraction}")
    started = time.perf_counter()
    read = read_captions(captions)
    matches = scorer.match([p for frames in read.phrases.values() for found in frames for p in found], progress)
    before = frame_scores(read, matches)
    decided, calls = [], 0
    if llm is not None and llm_fraction > 0:
        budget = int(llm_fraction * sum(len(caps) for caps in captions.values()))
        decided, calls = _decide(scorer, llm, _undecided(before, matches)[:budget], progress)
    after = frame_scores(read, matches | {m.phrase: m for m in decided}) if decided else before
    videos = {
        name: VideoScores(smooth(after[name].raw, SMOOTHING_WIDTH), after[name], smooth(c.raw, SMOOTHING_WIDTH))
        for name, c in before.items()
    }
    judge = f"{llm.backend}:{llm.model}" if llm else None
    return CaptionReasoning(videos, len(matches), decided, calls, judge, time.perf_counter() - started)


@dataclass(frozen=True)
class CaptionReason:
    """Why captions call a range anomalous: a phrase they say, the caption rule it breaks, where it is said."""

    phrase: str
    rule_id: str
    sentence: str
    first_frame: int
    last_frame: int


@dataclass
class CaptionCue:
    """Caption reasoning as a screening cue for one video: per captioned source frame, its smoothed score over
    ``EVENT_THRESHOLD`` (1.0: anomalous by its captions) and the phrase and caption rule behind it."""

    frames: np.ndarray  # source frame indices, ascending
    levels: np.ndarray
    phrases: list[str | None]
    rule_ids: list[str | None]
    sentences: dict[str, str]  # caption rule id -> its sentence
    origin: str  # the caption file
    llm_calls: int

    def at(self, frame_indices: np.ndarray) -> np.ndarray:
        """Levels at ``frame_indices``; 0 where a frame has no caption."""
        position = np.clip(np.searchsorted(self.frames, frame_indices), 0, len(self.frames) - 1)
        return np.where(self.frames[position] == frame_indices, self.levels[position], 0.0)

    def reason(self, start_frame: int, end_frame: int) -> CaptionReason | None:
        """The phrase behind most of the range's anomalous frames, with its rule and where it is said."""
        inside = np.flatnonzero((self.frames >= start_frame) & (self.frames <= end_frame) & (self.levels > 1.0))
        said = Counter((self.phrases[i], self.rule_ids[i]) for i in inside if self.rule_ids[i] is not None)
        if not said:
            return None
        (phrase, rule_id), _ = said.most_common(1)[0]
        where = [int(self.frames[i]) for i in inside if self.phrases[i] == phrase]
        return CaptionReason(phrase, rule_id, self.sentences[rule_id], where[0], where[-1])


def caption_cue(
    captions: ReplayedCaptions,
    scorer: CaptionScorer,
    llm: LLM | None = None,
    *,
    llm_fraction: float = DEFAULT_LLM_FRACTION,
    progress: bool = True,
) -> CaptionCue:
    """Reason over one video's captions (novelty counted within the video) for screening to fuse."""
    frames = np.array(sorted(captions.captions), dtype=np.int64)
    texts = {"video": [captions.captions[int(k)] for k in frames]}
    result = reason_over_captions(texts, scorer, llm, llm_fraction=llm_fraction, progress=progress)
    video = result.videos["video"]
    rule_ids = video.cues.rule_id
    sentences = {rule_id: scorer.sentence(rule_id) for rule_id in set(rule_ids) if rule_id is not None}
    return CaptionCue(
        frames, video.scores / EVENT_THRESHOLD, video.cues.phrase, rule_ids, sentences, captions.origin,
        result.llm_calls,
    )


def caption_events(
    video: VideoScores, frame_indices: np.ndarray, fps: float, threshold: float = EVENT_THRESHOLD
) -> list[Event]:
    """Runs of frames whose smoothed score exceeds ``threshold``, each with the rules its frames break (most
    frames first)."""
    events = group_events(frame_indices, video.scores, threshold, fps)
    for event in events:
        inside = np.flatnonzero((frame_indices >= event.start_frame) & (frame_indices <= event.end_frame))
        broken = Counter(video.cues.rule_id[i] for i in inside if video.cues.rule_id[i])
        event.rule_ids = [rule for rule, _ in broken.most_common()]
    return events


def _undecided(scores: dict[str, FrameScores], matches: dict[str, PhraseMatch]) -> list[PhraseMatch]:
    """Phrases closer to an anomaly rule than to normal behaviour, most frames decided by them first."""
    deciding = Counter(p for video in scores.values() for p in video.phrase if p is not None)
    leaning = [m for m in matches.values() if m.margin > 0]
    return sorted(leaning, key=lambda m: (-deciding[m.phrase], -m.margin, m.phrase))


def _decide(
    scorer: CaptionScorer, llm: LLM, candidates: list[PhraseMatch], progress: bool
) -> tuple[list[PhraseMatch], int]:
    """The LLM's verdicts on ``candidates`` and the number of chat calls they took.

    For each phrase the LLM picks, among the nearest anomaly and normal rules in a shuffled order, the one
    the phrase fits best; picking an anomaly rule makes the phrase anomalous under that rule."""
    text = load_prompts("captions")
    system = Message(role="system", content=text["system"])
    judge = f"{llm.backend}:{llm.model}"
    out, calls = [], 0
    for match in track(candidates, "LLM settling phrases", total=len(candidates), enabled=progress):
        options = scorer.nearest_rules(match.phrase, CHOICES_PER_KIND)
        # A fixed shuffle per phrase: where a rule is listed must not say which kind it is.
        random.Random(zlib.crc32(match.phrase.encode())).shuffle(options)
        letters = LETTERS[: len(options)]
        question = text["choices"].format(
            phrase=match.phrase,
            options="\n".join(f"{letter}) {rule.sentence}" for letter, rule in zip(letters, options)),
        )
        choice_model = create_model("RuleChoice", choice=(Literal[tuple(letters)], ...))
        try:
            answer = ask_structured(
                llm,
                [system, Message(role="user", content=question)],
                choice_model,
                attempts=LLM_ATTEMPTS,
                max_tokens=16,
            )
        except LLMError:
            calls += LLM_ATTEMPTS
            continue  # no valid choice: the phrase keeps its embedding score
        calls += answer.attempts
        chosen = options[letters.index(answer.value.choice)]
        out.append(match.decided(chosen.id if chosen.predicate.op == "not_in" else None, judge))
    return out, calls
