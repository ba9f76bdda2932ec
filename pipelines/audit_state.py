"""What an audit keeps in its output folder so that a failure or a kill loses no work and a re-run resumes.

``OUT/.anomalens/screening.npz`` is written once screening ends; ``OUT/.anomalens/explanations.json`` after
each verified explanation. Both carry a fingerprint of the audit's inputs (the video's files, how they are
read, the scene's learned state and rulebook, captions, caption rules, anomalens' version): a re-run whose
fingerprint matches reuses them, anything else screens again. Each file is replaced atomically, so a kill
leaves either the previous version or the new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from anomalens import __version__
from anomalens.files import atomic_write
from anomalens.progress import say
from anomalens.tools.screening import ScreeningResult
from anomalens.types import Event, Evidence, Explanation, Track
from anomalens.video import Frame

FOLDER = ".anomalens"
FORMAT = 2


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
    keyframes: dict[str, _Keyframe]
    tracks: list[Track]
    seconds: float


class _Explanations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int
    fingerprint: str
    explainer: str  # who explained them: kept only for the same LLM
    explanations: list[Explanation]


def fingerprint(source_identity: str, scene_digest: str, *inputs: str | Path | None) -> str:
    """The hash of what an audit's result rests on; ``inputs``: caption files or rule text (None: not given)."""
    hashed = hashlib.sha256(json.dumps([__version__, source_identity, scene_digest]).encode())
    for given in inputs:
        if given is None:
            hashed.update(b"\0none")
        elif isinstance(given, Path) or Path(given).is_file():
            hashed.update(b"\0file" + Path(given).read_bytes())
        else:
            hashed.update(b"\0text" + str(given).encode())
    return hashed.hexdigest()


class AuditState:
    """The kept work of the audit with ``fingerprint`` in the output folder ``out``."""

    def __init__(self, out: Path, fingerprint: str):
        self.folder = Path(out) / FOLDER
        self.fingerprint = fingerprint
        self.screening_file = self.folder / "screening.npz"
        self.explanations_file = self.folder / "explanations.json"

    def screening(self) -> tuple[ScreeningResult, list[Track]] | None:
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
        result = ScreeningResult(
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
            seconds=record.seconds,
        )
        return result, record.tracks

    def keep_screening(self, result: ScreeningResult, tracks: list[Track]) -> None:
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
            keyframes=keyframes,
            tracks=tracks,
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
