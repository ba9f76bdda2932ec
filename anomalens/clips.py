"""A short clip of each event to watch or share: the seconds around it, its objects boxed and named, as H.264 MP4
written by the ffmpeg that the imageio-ffmpeg package carries (no system tool needed)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from anomalens.draw import boxed
from anomalens.errors import MissingExtra
from anomalens.types import Event, Evidence
from anomalens.video import FrameSource

MARGIN_S = 1.0  # seconds shown before and after an event
LONGEST_S = 8.0  # a longer event's clip is the seconds around its peak


def clip_frames(event: Event, fps: float, last: int) -> tuple[int, int]:
    """The source frames ``[first, stop)`` of ``event``'s clip: the event and a margin on each side, at most
    ``LONGEST_S`` long (then centred on its peak), within ``0..last``."""
    margin, longest = round(MARGIN_S * fps), max(1, round(LONGEST_S * fps))
    first, stop = event.start_frame - margin, event.end_frame + margin + 1
    if stop - first > longest:
        first = event.peak_frame - longest // 2
        stop = first + longest
    first = max(0, first)
    return first, max(first + 1, min(stop, last + 1))


def write_clip(path: Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Encode BGR ``frames`` (one size) as H.264 MP4 at ``path``, whole or not at all (written beside it, then
    moved into place)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise MissingExtra("event clips need imageio-ffmpeg: pip install 'anomalens[clips]'") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.mp4")
    writer = None
    try:
        for image in frames:
            height, width = (side - side % 2 for side in image.shape[:2])  # yuv420p: even sides
            if writer is None:
                writer = imageio_ffmpeg.write_frames(
                    str(partial), (width, height), fps=fps, codec="libx264", pix_fmt_in="bgr24",
                    pix_fmt_out="yuv420p", macro_block_size=1, quality=None, ffmpeg_log_level="error",
                    output_params=["-preset", "veryfast", "-crf", "26", "-movflags", "+faststart"],
                )  # fmt: skip
                writer.send(None)
            writer.send(np.ascontiguousarray(image[:height, :width]))
        if writer is None:
            raise ValueError(f"{path}: a clip needs at least one frame")
        writer.close()
        os.replace(partial, path)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return path


def event_clip(source: FrameSource, event: Event, screened: Mapping[int, Evidence], path: Path) -> Path:
    """``event``'s clip from ``source``, each frame with the objects of its screening evidence (``screened``: by
    frame index; a frame screening skipped shows the last one screened before it)."""
    first, stop = clip_frames(event, source.fps, source.declared_frames - 1)

    def drawn() -> Iterable[np.ndarray]:
        seen = None
        for frame in source.between(first, stop):
            seen = screened.get(frame.index, seen)
            yield boxed(frame.image, seen, frame.scale) if seen is not None else frame.image

    return write_clip(path, drawn(), source.fps / source.stride)
