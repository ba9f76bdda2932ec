"""One fingerprint of "the same input": the footage, how it is read, the scene, the captions and caption rules,
and anomalens' version. An audit's kept work is reused only under it (``audit_state``), chat's index cache and
``audit-batch``'s skipping key by it, and the event store knows a video by it: the same footage audited again
into another folder replaces its earlier events."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from anomalens import __version__
from anomalens.tools.scene import Scene
from anomalens.video import FrameSource

LEARNED_FROM_ITSELF = "the video's own normality"  # the scene of a chat without one: learned from the footage


def fingerprint(
    source: FrameSource, scene: Scene | None, *, captions: str | Path | None = None,
    caption_rules: str | Path | None = None,
) -> str:
    """The sha256 of what a screening of ``source`` against ``scene`` rests on (``scene`` None: the video's own
    normality); ``captions`` and ``caption_rules`` count by their content."""
    scene_part = scene.digest() if scene is not None else LEARNED_FROM_ITSELF
    hashed = hashlib.sha256(json.dumps([__version__, source.identity(), scene_part]).encode())
    for given in (captions, caption_rules):
        hashed.update(b"\0none" if given is None else b"\0file" + Path(given).read_bytes())
    return hashed.hexdigest()
