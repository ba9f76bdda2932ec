"""What the agent knows about one video: events, evidence, tracks, rules and (optionally) captions.

Built once per video from a screening run and saved as JSON, so a chat session does not screen the video
again. Evidence is reached by short handles the LLM can cite cheaply: ``F<k>`` is the screening evidence of
frame ``k``, ``C<k>`` its caption, and ``D<k>``, ``M<k>``, ``S<k>`` the latest detection, CLIP match and
segmentation the agent ran on it (live tools, present when their weights are).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from anomalens.agents.caption_reasoning import CaptionReason
from anomalens.agents.screening import ScreeningResult
from anomalens.files import atomic_write
from anomalens.tools.captions import ReplayedCaptions
from anomalens.types import Event, Evidence, Rule, Rulebook, Track

HANDLE_PATTERN = r"^[FCDMS][0-9]+$"
_HANDLE = re.compile(r"^([FCDMS])([0-9]+)$")
LIVE_HANDLES = {"detect": "D", "clip": "M", "segment": "S", "caption": "C"}


class VideoIndex(BaseModel):
    """Everything the agent's tools read. ``evidence`` holds compact evidence (no masks, no maps)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    video: str
    fps: float
    source_size: tuple[int, int]
    frames: int
    threshold: float
    events: list[Event]
    evidence: list[Evidence]
    tracks: list[Track] = Field(default_factory=list)
    rulebook: Rulebook | None = None
    captions_file: str | None = None
    caption_reasons: dict[str, CaptionReason] = Field(default_factory=dict)  # event id -> caption rule broken
    _by_id: dict[str, Evidence] = PrivateAttr(default_factory=dict)
    _by_frame: dict[int, Evidence] = PrivateAttr(default_factory=dict)
    _captions: ReplayedCaptions | None = PrivateAttr(default=None)
    _live: dict[tuple[str, int], Evidence] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context) -> None:
        self._by_id = {ev.id: ev for ev in self.evidence}
        self._by_frame = {ev.frame_index: ev for ev in self.evidence if ev.source.tool != "caption"}
        self._captions = ReplayedCaptions.load(self.captions_file, self.fps) if self.captions_file else None

    # --- lookups -------------------------------------------------------------------------------------

    def get(self, evidence_id: str) -> Evidence | None:
        return self._by_id.get(evidence_id)

    def event(self, event_id: str) -> Event:
        for event in self.events:
            if event.id == event_id:
                return event
        raise KeyError(f"no event {event_id!r} (events: {', '.join(e.id for e in self.events) or 'none'})")

    def track(self, track_id: int) -> Track:
        for track in self.tracks:
            if track.id == track_id:
                return track
        raise KeyError(f"no track {track_id}")

    def rule(self, rule_id: str) -> Rule | None:
        """The rule ``rule_id`` of the scene's rulebook, or None (no rulebook, or no such rule)."""
        if self.rulebook is None:
            return None
        return next((r for r in self.rulebook.rules if r.id == rule_id), None)

    def frame_evidence(self, frame_index: int) -> Evidence:
        if frame_index not in self._by_frame:
            raise KeyError(f"no screening evidence kept for frame {frame_index}")
        return self._by_frame[frame_index]

    @property
    def captions(self) -> ReplayedCaptions | None:
        return self._captions

    def caption(self, frame_index: int) -> Evidence:
        """Frame ``frame_index``'s caption as evidence, added to the index so claims can cite it."""
        if self._captions is None:
            raise KeyError("this video has no captions")
        evidence = self._captions.evidence(frame_index)
        self._by_id.setdefault(evidence.id, evidence)
        return evidence

    # --- handles -------------------------------------------------------------------------------------

    def add_live(self, evidence: Evidence) -> str:
        """Keep what a live tool found on a frame, citable by its handle (returned)."""
        handle = self.handle(evidence)
        self._live[(handle[0], evidence.frame_index)] = evidence
        self._by_id[evidence.id] = evidence
        return handle

    def handle(self, evidence: Evidence) -> str:
        return LIVE_HANDLES.get(evidence.source.tool, "F") + str(evidence.frame_index)

    def resolve(self, handle: str) -> str:
        """The evidence id behind a handle (``F12``, ``C12``) or an id; unknown handles come back unchanged,
        so the verifier can say which citation does not exist."""
        match = _HANDLE.match(handle.strip())
        if not match:
            return handle
        kind, frame = match[1], int(match[2])
        if (kind, frame) in self._live:
            return self._live[(kind, frame)].id
        try:
            return (self.caption(frame) if kind == "C" else self.frame_evidence(frame)).id
        except KeyError:
            return handle

    # --- files ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the index as JSON (caption evidence is not stored: it is rebuilt, with the same ids, from
        the caption file)."""
        atomic_write(Path(path), self.model_dump_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> VideoIndex:
        return cls.model_validate_json(Path(path).read_text())


def index_from_screening(
    result: ScreeningResult,
    *,
    tracks: list[Track] = (),
    rulebook: Rulebook | None = None,
    captions_file: str | Path | None = None,
    every_frame: bool = False,
) -> VideoIndex:
    """The index of one screening run: its events and cited evidence, and with ``every_frame`` the compact
    evidence and tracks of every frame (for questions about any moment of the video)."""
    compact = {ev.id: ev for ev in result.frames} if every_frame else {}
    compact.update(
        {ev.id: ev.model_copy(update={"anomaly_map": None, "masks": None}) for ev in result.evidence.values()}
    )
    cited = {t for event in result.events for t in event.track_ids}
    return VideoIndex(
        video=result.source_name,
        fps=result.fps,
        source_size=result.source_size,
        frames=len(result.frame_indices),
        threshold=result.threshold,
        events=result.events,
        evidence=sorted(compact.values(), key=lambda ev: ev.frame_index or 0),
        tracks=list(tracks) if every_frame else [t for t in tracks if t.id in cited],
        rulebook=rulebook,
        captions_file=str(captions_file) if captions_file else None,
        caption_reasons=result.caption_reasons,
    )
