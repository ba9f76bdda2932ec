"""What the agent knows about one video, and the handles its claims cite.

``VideoIndex`` is built once per video from a screening run (``pipelines``) and saved as JSON, so a chat
session does not screen the video again; it is never changed after it is built. Evidence is reached by short
handles the LLM can cite cheaply: ``F<k>`` is the screening evidence of frame ``k``, ``C<k>`` its caption, and
``D<k>``, ``M<k>``, ``S<k>`` the latest detection, CLIP match and segmentation the agent ran on it. What the
agent produces while it works (live tools) lives in its graph state; an ``EvidenceBook`` joins the two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anomalens.agents.llm.structured import problem_summary
from anomalens.errors import ConfigError
from anomalens.files import atomic_write, read_versioned
from anomalens.report import Report
from anomalens.tools.captions import ReplayedCaptions
from anomalens.tools.objects.describers import ESTABLISHED_SECONDS, window
from anomalens.tools.screening import LiveEvent, ScreeningResult
from anomalens.types import Event, Evidence, EvidenceKind, Rule, Rulebook, Track

INDEX_FORMAT = 3
PART_OF_THE_SCENE = 0.1  # an object whose box mostly differed from the background less than this is the scene's
HANDLES = {
    EvidenceKind.FRAME: "F",
    EvidenceKind.CAPTION: "C",
    EvidenceKind.DETECTION: "D",
    EvidenceKind.TEXT_MATCH: "M",
    EvidenceKind.SEGMENTATION: "S",
}
HANDLE_PATTERN = r"^[FCDMS][0-9]+$"
_HANDLE = re.compile(r"^([FCDMS])([0-9]+)$")


def _frame_of(evidence: Evidence) -> int:
    return evidence.frame_index or 0


class VideoIndex(BaseModel):
    """Everything the agent's tools read about one video. ``evidence`` holds compact evidence (no masks, no
    maps); captions are read from ``captions_file`` (their evidence is rebuilt, with the same ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    format_version: Literal[3] = INDEX_FORMAT
    video: str
    fps: float
    source_size: tuple[int, int]
    frames: int  # the source frames up to the last one screened (a part of a video ends there)
    threshold: float
    events: list[Event]
    evidence: list[Evidence]
    tracks: list[Track] = Field(default_factory=list)
    every_track: bool = False  # ``tracks`` holds every track of the video, not only those its events cite
    rulebook: Rulebook | None = None
    captions_file: str | None = None

    @classmethod
    def from_screening(
        cls, screening: ScreeningResult, rulebook: Rulebook | None, *, captions: str | Path | None = None,
        every_frame: bool = False,
    ) -> VideoIndex:
        """The index of a screened video: its events and cited evidence, and with ``every_frame`` the compact
        evidence and tracks of every frame (for questions about any moment of the video)."""
        compact = {ev.id: ev for ev in screening.frames} if every_frame else {}
        compact.update(
            {ev.id: ev.model_copy(update={"anomaly_map": None, "masks": None}) for ev in screening.evidence.values()}
        )
        cited = {t for event in screening.events for t in event.track_ids}
        return cls(
            video=screening.source_name, fps=screening.fps, source_size=screening.source_size,
            # A part's times stay the video's: the index reaches its last screened frame.
            frames=int(screening.frame_indices[-1]) + 1 if len(screening.frame_indices) else 0,
            threshold=screening.threshold, events=screening.events,
            evidence=sorted(compact.values(), key=_frame_of),
            tracks=list(screening.tracks) if every_frame else [t for t in screening.tracks if t.id in cited],
            every_track=every_frame, rulebook=rulebook, captions_file=str(captions) if captions else None,
        )  # fmt: skip

    @classmethod
    def from_report(cls, report: Report) -> VideoIndex:
        """What a stored report holds of its video: its events, evidence, tracks and rulebook."""
        frames = report.frame_indices[-1] + 1 if report.frame_indices else 0
        return cls(
            video=report.input, fps=report.fps, source_size=report.source_size, frames=max(frames, 1),
            threshold=report.threshold, events=report.events, evidence=report.evidence, tracks=report.tracks,
            rulebook=report.rulebook,
        )  # fmt: skip

    @classmethod
    def from_live(
        cls, live: LiveEvent, *, video: str, fps: float, source_size: tuple[int, int], threshold: float,
        tracks: Sequence[Track], rulebook: Rulebook | None,
    ) -> VideoIndex:
        """What the agent reads about one closed event of a stream: its evidence, the tracks it cites."""
        event = live.event
        return cls(
            video=video, fps=fps, source_size=source_size, frames=event.end_frame + 1, threshold=threshold,
            events=[event], evidence=sorted({ev.id: ev for ev in live.evidence}.values(), key=_frame_of),
            tracks=[t for t in tracks if t.id in event.track_ids], rulebook=rulebook,
        )  # fmt: skip

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> VideoIndex:
        """A copy with ``update``d fields, whose lookups are computed afresh (pydantic's copy would keep the
        original's cached ones)."""
        copied = super().model_copy(update=update, deep=deep)
        for name in _LOOKUPS:
            copied.__dict__.pop(name, None)
        return copied

    @cached_property
    def _by_id(self) -> dict[str, Evidence]:
        return {ev.id: ev for ev in [*self.evidence, *self._captions.values()]}

    @cached_property
    def _by_frame(self) -> dict[int, Evidence]:
        return {ev.frame_index: ev for ev in self.evidence if ev.kind is EvidenceKind.FRAME}

    @cached_property
    def _captions(self) -> dict[int, Evidence]:
        if self.captions_file is None:
            return {}
        replay = ReplayedCaptions.load(self.captions_file, self.fps)
        return {k: replay.evidence(k) for k in replay.captions}

    # --- lookups: None (or an empty list) when absent -----------------------------------------------

    def get(self, evidence_id: str) -> Evidence | None:
        return self._by_id.get(evidence_id)

    def event(self, event_id: str) -> Event | None:
        return next((e for e in self.events if e.id == event_id), None)

    def track(self, track_id: int) -> Track | None:
        return next((t for t in self.tracks if t.id == track_id), None)

    @cached_property
    def objects(self) -> list[Track]:
        """The tracks followed long enough to be objects, not flicker, that mostly differed from the scene's
        background: a sign or a parked van that was there all along is part of the scene."""
        least = window(self.fps, ESTABLISHED_SECONDS)
        return [t for t in self.tracks if len(t.frames) >= least and _stood_out(t)]

    def in_view(self, frame_index: int) -> list[Track] | None:
        """The objects in view at ``frame_index``: every one alive then (between its first and last sighting); None
        when the index does not hold every track."""
        return [t for t in self.objects if t.alive(frame_index)] if self.every_track else None

    def rule(self, rule_id: str) -> Rule | None:
        """The rule ``rule_id`` of the scene's rulebook, or None (no rulebook, or no such rule)."""
        return self.rulebook.find(rule_id) if self.rulebook is not None else None

    def frame_evidence(self, frame_index: int) -> Evidence | None:
        return self._by_frame.get(frame_index)

    @property
    def has_captions(self) -> bool:
        return self.captions_file is not None

    def caption(self, frame_index: int) -> Evidence | None:
        return self._captions.get(frame_index)

    @property
    def captions(self) -> dict[int, str]:
        return {k: ev.text for k, ev in self._captions.items()}

    # --- files ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        atomic_write(Path(path), self.model_dump_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> VideoIndex:
        """Read an index; one written by another version of anomalens is refused with a clear error."""
        data = read_versioned(Path(path), "video index", INDEX_FORMAT, "index the video again (`anomalens chat` does)")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(f"{path}: not a valid video index: {problem_summary(error, 'index')}") from None


_LOOKUPS = [name for name, value in vars(VideoIndex).items() if isinstance(value, cached_property)]


def _stood_out(track: Track) -> bool:
    """Whether ``track`` differed from the background most of the time (a sign differs only while someone passes it)."""
    differs = [v for v in track.facts.get("differs", []) if v is not None]
    return not differs or float(np.median(differs)) >= PART_OF_THE_SCENE


def handle(evidence: Evidence) -> str:
    """The short handle that cites ``evidence`` (``F12``, ``D12``, ...)."""
    return HANDLES.get(evidence.kind, "F") + str(evidence.frame_index)


class EvidenceBook:
    """What claims may cite: the index's evidence and what the agent produced or read while it worked (later
    entries win a handle: ``D12`` is the latest detection on frame 12)."""

    def __init__(self, index: VideoIndex, extra: Sequence[Evidence] = ()):
        self.index = index
        self.extra = list(extra)

    def get(self, evidence_id: str) -> Evidence | None:
        found = self.index.get(evidence_id)
        return found if found is not None else next((ev for ev in self.extra if ev.id == evidence_id), None)

    def event_frames(self, event: Event) -> list[Evidence]:
        """The frames ``event`` cites, then its peak frame when it does not cite that one."""
        frames = [ev for evidence_id in event.evidence_ids if (ev := self.get(evidence_id)) is not None]
        peak = self.index.frame_evidence(event.peak_frame)
        return frames + ([peak] if peak is not None and all(ev.id != peak.id for ev in frames) else [])

    def find(self, handle_text: str) -> Evidence | None:
        """The evidence behind a handle (``F12``, ``C12``, ``D12``), or None."""
        match = _HANDLE.match(handle_text.strip())
        if not match:
            return None
        letter, frame = match[1], int(match[2])
        produced = [ev for ev in self.extra if handle(ev) == f"{letter}{frame}"]
        if produced:
            return produced[-1]
        if letter == "F":
            return self.index.frame_evidence(frame)
        return self.index.caption(frame) if letter == "C" else None

    def resolve(self, cited: str) -> str:
        """The evidence id behind a handle or an id; what cannot be resolved comes back unchanged, so the verifier
        can say which citation does not exist."""
        found = self.find(cited)
        return found.id if found is not None else cited
