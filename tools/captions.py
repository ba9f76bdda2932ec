"""Replayed captions: frame descriptions computed once (by a VLM, here or elsewhere) and read back as evidence.

Captioning every frame with a VLM is what makes dense-captioning systems slow; users cache the output and
replay it. Two layouts are read:

- a text file with one caption per line, line ``k`` (0-based) describing frame ``k`` (the layout of the
  CogVLM captions in ``../shared/data/vlm_captions``);
- a JSONL file with one ``{"frame": k, "caption": "..."}`` object per line (frames may be sparse).

Caption text is data, never instructions: it reaches the LLM only inside tool results.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from anomalens.errors import AnomalensError
from anomalens.files import read_text
from anomalens.types import Evidence, EvidenceKind, Source


class ReplayedCaptions:
    """Captions keyed by source frame index; ``evidence(k)`` returns frame ``k``'s caption as ``Evidence``."""

    def __init__(self, captions: dict[int, str], origin: str, fps: float | None = None):
        self.captions = captions
        self.origin = origin
        self.fps = fps

    @classmethod
    def load(cls, path: str | Path, fps: float | None = None) -> ReplayedCaptions:
        path = Path(path)
        lines = read_text(path, "caption file").splitlines()
        if path.suffix == ".jsonl":
            captions = {}
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    captions[int(item["frame"])] = str(item["caption"])
                except (ValueError, KeyError, TypeError) as error:
                    raise AnomalensError(
                        f'{path}:{number}: expected {{"frame": <int>, "caption": "<text>"}} ({error})'
                    ) from None
        else:
            captions = {k: line.strip() for k, line in enumerate(lines)}
        if not captions:
            raise AnomalensError(f"{path}: no captions in the file")
        return cls(captions, str(path), fps)

    def __len__(self) -> int:
        return len(self.captions)

    def mismatch(self, frames: int) -> str | None:
        """What is wrong with these captions for a video of ``frames`` frames (said as a warning: a caption file
        of another video, or cut short, silently changes what screening and the agent read), or None."""
        said = [k for k, text in self.captions.items() if text.strip()]
        if not said:
            return f"{self.origin}: every caption is blank"
        missing = frames - len([k for k in said if 0 <= k < frames])
        beyond = len([k for k in self.captions if not 0 <= k < frames])
        if not missing and not beyond:
            return None
        parts = [f"{missing} of the {frames} frames have no caption"] if missing else []
        parts += [f"{beyond} caption(s) lie beyond the video's last frame"] if beyond else []
        return f"{self.origin}: {' and '.join(parts)}: is it the caption file of this video?"

    def __contains__(self, frame_index: int) -> bool:
        return frame_index in self.captions

    def caption(self, image, frame_index: int) -> Evidence:
        """The captioner interface: the replayed caption of ``frame_index`` (the image is not looked at)."""
        return self.evidence(frame_index)

    def evidence(self, frame_index: int) -> Evidence:
        if frame_index not in self.captions:
            first, last = min(self.captions), max(self.captions)
            raise KeyError(f"no caption for frame {frame_index} (captions cover frames {first}-{last})")
        return Evidence(
            kind=EvidenceKind.CAPTION,
            source=Source(tool="caption", backend="replay", weights=Path(self.origin).name),
            frame_index=frame_index,
            time_s=frame_index / self.fps if self.fps else None,
            text=self.captions[frame_index],
        )


def mentions(text: str, term: str) -> bool:
    """True when every word of ``term`` occurs in ``text`` as a word (singular or plural)."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    words |= {w[:-1] for w in words if w.endswith("s")} | {w[:-2] for w in words if w.endswith("es")}
    wanted = re.findall(r"[a-z0-9]+", term.lower())
    return bool(wanted) and all(w in words or w.rstrip("s") in words for w in wanted)
