"""Learning a scene, assembled: normal footage in, a scene folder (background, motion model, ``rules.yaml``) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomalens.config import load_settings
from anomalens.tools.scene import Scene


def learn_scene(
    normal: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    fps: float | None = None,
    max_side: int | None = None,
    contamination: float = 0.0,
    progress: bool = True,
) -> Scene:
    """Learn what is normal for a scene from normal videos or frame folders of one camera view, saved to ``out``
    (``rules.yaml`` there is the editable rulebook). ``fps``: the frame rate of frame folders; ``max_side``: the
    analysis resolution (default: the settings'); ``contamination``: the share of object observations that may
    be anomalous (0 for footage known to be normal)."""
    max_side = max_side or load_settings().max_side
    scene = Scene.learn([str(p) for p in normal], max_side=max_side, fps=fps, contamination=contamination,
                        progress=progress)  # fmt: skip
    if out is not None:
        scene.save(out)
    return scene
