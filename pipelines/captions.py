"""Caption reasoning, assembled: per-frame anomaly scores for captioned video, each with the caption rule it
breaks, as a benchmark's scores, a screening cue, or events of their own.

A cascade. Every caption is scored cheaply (``tools.caption_scoring``: phrases matched by meaning against
the rules, plus novelty). Captions repeat the same phrases frame after frame, so the LLM judges *phrases*,
not frames: the phrases that lean towards an anomaly rule, the ones that decide the most frames first, up
to a budget of ``llm_fraction`` of the frame count. It chooses the rule a phrase fits best among the nearest
anomaly and normal rules; choosing a normal rule clears the phrase in every frame that says it, choosing an
anomaly rule names the rule those frames break (``agents.caption_judge``). Scores are then smoothed over time
within each video.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomalens.agents.caption_judge import judge_phrases
from anomalens.agents.llm import LLM
from anomalens.config import Settings, load_settings
from anomalens.errors import AnomalensError
from anomalens.events import group_events, smooth
from anomalens.rules.captions import everyday_anomalies, load_rule_text
from anomalens.rules.io import load_rulebook
from anomalens.tools.caption_scoring import (
    CaptionScorer,
    FrameScores,
    PhraseMatch,
    frame_scores,
    induce_caption_rules,
    read_captions,
)
from anomalens.tools.captions import ReplayedCaptions
from anomalens.tools.embeddings import SentenceEmbedder
from anomalens.types import CueReason, Event, Rulebook

# At most this share of the frame count in LLM calls; 1% keeps ShanghaiTech's 40,791 frames at 407 calls,
# about 17 minutes with the embedded 1.5B model on two cores.
DEFAULT_LLM_FRACTION = 0.01
# Centred moving average over 31 frames (about a second at 25-30 fps); chosen on ShanghaiTech among 11, 21
# and 31 with the LLM off, and used unchanged on every dataset (see eval/captions.py).
SMOOTHING_WIDTH = 31
# A frame is anomalous above this smoothed score: ShanghaiTech's best-F1 threshold (0.101, F1 0.73 with the
# default LLM share), the same everywhere.
EVENT_THRESHOLD = 0.10


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
        decided, calls = judge_phrases(scorer, llm, _undecided(before, matches)[:budget], progress)
    after = frame_scores(read, matches | {m.phrase: m for m in decided}) if decided else before
    videos = {
        name: VideoScores(smooth(after[name].raw, SMOOTHING_WIDTH), after[name], smooth(c.raw, SMOOTHING_WIDTH))
        for name, c in before.items()
    }
    judge = f"{llm.backend}:{llm.model}" if llm else None
    return CaptionReasoning(videos, len(matches), decided, calls, judge, time.perf_counter() - started)


@dataclass(frozen=True)
class CaptionCue:
    """Caption reasoning as a screening cue for one video (``tools.protocols.Cue``): per captioned source frame,
    its smoothed score over ``EVENT_THRESHOLD`` (1.0: anomalous by its captions) and the phrase and caption rule
    behind it."""

    frames: np.ndarray  # source frame indices, ascending
    level: np.ndarray  # of each of those frames
    phrases: list[str | None]
    rule_ids: list[str | None]
    sentences: dict[str, str]  # caption rule id -> its sentence
    origin: str  # the caption file
    llm_calls: int

    def levels(self, frame_indices: np.ndarray) -> np.ndarray:
        """Levels at ``frame_indices``; 0 where a frame has no caption."""
        position = np.clip(np.searchsorted(self.frames, frame_indices), 0, len(self.frames) - 1)
        return np.where(self.frames[position] == frame_indices, self.level[position], 0.0)

    def reason(self, start_frame: int, end_frame: int) -> CueReason | None:
        """The phrase behind most of the range's anomalous frames, with its rule and where it is said."""
        inside = np.flatnonzero((self.frames >= start_frame) & (self.frames <= end_frame) & (self.level > 1.0))
        said = Counter((self.phrases[i], self.rule_ids[i]) for i in inside if self.rule_ids[i] is not None)
        if not said:
            return None
        (phrase, rule_id), _ = said.most_common(1)[0]
        where = [int(self.frames[i]) for i in inside if self.phrases[i] == phrase]
        return CueReason(
            cue="captions", phrase=phrase, rule_id=rule_id, sentence=self.sentences[rule_id], first_frame=where[0],
            last_frame=where[-1],
        )


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

    def broken(start: int, end: int, peak: int) -> dict:
        inside = np.flatnonzero((frame_indices >= start) & (frame_indices <= end))
        count = Counter(video.cues.rule_id[i] for i in inside if video.cues.rule_id[i])
        return {"rule_ids": [rule for rule, _ in count.most_common()]}

    return group_events(frame_indices, video.scores, threshold, fps, details=broken)


def _undecided(scores: dict[str, FrameScores], matches: dict[str, PhraseMatch]) -> list[PhraseMatch]:
    """Phrases closer to an anomaly rule than to normal behaviour, most frames decided by them first."""
    deciding = Counter(p for video in scores.values() for p in video.phrase if p is not None)
    leaning = [m for m in matches.values() if m.margin > 0]
    return sorted(leaning, key=lambda m: (-deciding[m.phrase], -m.margin, m.phrase))


def caption_rulebook(path: str | Path) -> Rulebook:
    """Caption rules from rule text (``.txt``: numbered items under anomaly/normal headings) or rulebook YAML."""
    path = Path(path)
    return load_rule_text(path) if path.suffix == ".txt" else load_rulebook(path)


def sentence_embedder(settings: Settings | None = None) -> SentenceEmbedder:
    """The sentence embedder of the settings (``ANOMALENS_EMBEDDER``)."""
    settings = settings or load_settings()
    return SentenceEmbedder.load(settings.embedder, root=settings.model_dir)


def open_caption_cue(
    captions: ReplayedCaptions, rules: Rulebook, llm: LLM | None, progress: bool = True
) -> CaptionCue:
    """A video's captions read against caption rules, ready to fuse into screening."""
    return caption_cue(captions, CaptionScorer(rules, sentence_embedder()), llm, progress=progress)


@dataclass(frozen=True)
class CaptionRun:
    """Caption reasoning over several caption files: the reasoning, each video's frames and events."""

    reasoning: CaptionReasoning
    rulebook: Rulebook
    frames: dict[str, np.ndarray]  # video -> source frame index of each caption
    events: dict[str, list[Event]]

    def to_json(self) -> dict:
        report = self.reasoning.to_json()
        for name, events in self.events.items():
            report["videos"][name]["frames"] = self.frames[name].tolist()
            report["videos"][name]["events"] = [e.model_dump(mode="json") for e in events]
        return report


def reason_captions(
    caption_files: list[str | Path],
    rules: str | Path,
    *,
    fps: float,
    threshold: float = EVENT_THRESHOLD,
    llm_fraction: float = DEFAULT_LLM_FRACTION,
    llm: LLM | None = None,
    progress: bool = True,
) -> CaptionRun:
    """Anomalies in captioned video (one caption file per video, named by its file): every caption scored
    against the caption ``rules`` (rule text or YAML), ``llm`` settling the phrases that decide most frames
    (at most ``llm_fraction`` of the frames in calls), and events above ``threshold``."""
    rulebook = caption_rulebook(rules)
    replays = {Path(path).stem: ReplayedCaptions.load(path) for path in caption_files}
    if len(replays) < len(caption_files):
        raise AnomalensError("caption files need distinct names: the file name (without suffix) names the video")
    frames = {name: np.array(sorted(replay.captions)) for name, replay in replays.items()}
    texts = {name: [replays[name].captions[int(k)] for k in frames[name]] for name in replays}
    scorer = CaptionScorer(rulebook, sentence_embedder())
    reasoning = reason_over_captions(texts, scorer, llm, llm_fraction=llm_fraction, progress=progress)
    events = {name: caption_events(video, frames[name], fps, threshold) for name, video in reasoning.videos.items()}
    return CaptionRun(reasoning, rulebook, frames, events)


def learn_caption_rules(
    normal_caption_files: list[str | Path], *, anomalies: str | Path | None = None, scene: str = ""
) -> Rulebook:
    """Caption rules from captions of normal footage: what they say often becomes normal rules; the anomaly rules
    of ``anomalies`` (rule text; default: the everyday anomalies shipped with anomalens) that the footage shows
    are switched off."""
    start = everyday_anomalies() if anomalies is None else load_rule_text(anomalies)
    normal = [caption for path in normal_caption_files for caption in ReplayedCaptions.load(path).captions.values()]
    return induce_caption_rules(normal, sentence_embedder(), start, scene=scene)
