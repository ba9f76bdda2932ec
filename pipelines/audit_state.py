"""What an audit keeps in its output folder so that a failure or a kill loses no work and a re-run resumes.

``OUT/.anomalens/screening.npz`` is written once screening ends; ``OUT/.anomalens/explanations.json`` after
each verified explanation. Both carry the fingerprint of the audit's inputs (``pipelines.fingerprint``): a
re-run whose fingerprint matches reuses them, anything else screens again. Each file is replaced atomically, so a
kill leaves either the previous version or the new one.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from anomalens.files import atomic_write
from anomalens.progress import say
from anomalens.tools.screening import ScreeningResult
from anomalens.types import Event, Evidence, Explanation, Track
from anomalens.video import Frame

FOLDER = ".anomalens"
FORMAT = 3  # 3: every frame's compact evidence too, for chat


class _Keyframe(BaseModel):
    """An event's peak frame without its pixels (kept beside, in the npz) and the evidence drawn on it."""

    model_config = ConfigDict(extra="forbid")
    index: int
    time_s: float
    scale: float
    source_size: tuple[int, int]
    path: str | None
    evidence: Evidence


class _Screening(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int
    fingerprint: str
    threshold: float
    fps: float
    source_name: str
    source_size: tuple[int, int]
    events: list[Event]
    evidence: list[Evidence]
    frames: list[Evidence]  # every frame's compact evidence: chat answers about any moment from it
    keyframes: dict[str, _Keyframe]
    tracks: list[Track]
    seconds: float


class _Explanations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int
    fingerprint: str
    explainer: str  # who explained them: kept only for the same LLM
    explanations: list[Explanation]


class AuditState:
    """The kept work of the audit with ``fingerprint`` in the output folder ``out``."""

    def __init__(self, out: Path, fingerprint: str):
        self.out = Path(out)
        self.folder = self.out / FOLDER
        self.fingerprint = fingerprint
        self.screening_file = self.folder / "screening.npz"
        self.explanations_file = self.folder / "explanations.json"

    def screening(self) -> ScreeningResult | None:
        """The screening kept by an earlier run of this audit, or None (none kept, or of other inputs)."""
        if not self.screening_file.is_file():
            return None
        try:
            with np.load(self.screening_file, allow_pickle=False) as kept:
                arrays = dict(kept)
            record = _Screening.model_validate_json(arrays.pop("record").tobytes())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # ValueError: a bad record too
            say(f"{self.screening_file}: unreadable; screening again")
            return None
        if record.format_version != FORMAT or record.fingerprint != self.fingerprint:
            return None
        keyframes = {
            event_id: (
                Frame(k.index, k.time_s, arrays[f"keyframe_{event_id}"], k.scale, k.source_size, k.path),
                k.evidence,
            )
            for event_id, k in record.keyframes.items()
        }
        return ScreeningResult(
            frame_indices=arrays["frame_indices"],
            raw_scores=arrays["raw_scores"],
            scores=arrays["scores"],
            threshold=record.threshold,
            fps=record.fps,
            source_name=record.source_name,
            source_size=record.source_size,
            events=record.events,
            evidence={ev.id: ev for ev in record.evidence},
            keyframes=keyframes,
            frames=record.frames,
            tracks=record.tracks,
            seconds=record.seconds,
        )

    def keep_screening(self, result: ScreeningResult) -> None:
        """Keep a finished screening; explanations kept for an earlier screening no longer apply."""
        self.explanations_file.unlink(missing_ok=True)
        keyframes = {
            event_id: _Keyframe(
                index=frame.index,
                time_s=frame.time_s,
                scale=frame.scale,
                source_size=frame.source_size,
                path=frame.path,
                evidence=evidence,
            )
            for event_id, (frame, evidence) in result.keyframes.items()
        }
        record = _Screening(
            format_version=FORMAT,
            fingerprint=self.fingerprint,
            threshold=result.threshold,
            fps=result.fps,
            source_name=result.source_name,
            source_size=result.source_size,
            events=result.events,
            evidence=list(result.evidence.values()),
            frames=result.frames,
            keyframes=keyframes,
            tracks=result.tracks,
            seconds=result.seconds,
        )
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            record=np.frombuffer(record.model_dump_json().encode(), dtype=np.uint8),
            frame_indices=result.frame_indices,
            raw_scores=result.raw_scores,
            scores=result.scores,
            **{f"keyframe_{event_id}": frame.image for event_id, (frame, _) in result.keyframes.items()},
        )
        atomic_write(self.screening_file, buffer.getvalue())

    def explanations(self, explainer: str) -> list[Explanation]:
        """The explanations ``explainer`` finished in an earlier run of this audit (none when another explained)."""
        if not self.explanations_file.is_file():
            return []
        try:
            record = _Explanations.model_validate_json(self.explanations_file.read_bytes())
        except (OSError, ValueError):
            say(f"{self.explanations_file}: unreadable; explaining every event again")
            return []
        if record.format_version != FORMAT or record.fingerprint != self.fingerprint:
            return []
        return record.explanations if record.explainer == explainer else []

    def keep_explanations(self, explainer: str, explanations: list[Explanation]) -> None:
        record = _Explanations(
            format_version=FORMAT, fingerprint=self.fingerprint, explainer=explainer, explanations=explanations
        )
        atomic_write(self.explanations_file, record.model_dump_json())
