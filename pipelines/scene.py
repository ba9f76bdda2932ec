"""Learning a scene, assembled: normal footage in, a scene folder (background, motion model, ``rules.yaml``) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomalens.config import load_settings
from anomalens.errors import ConfigError
from anomalens.files import keep_copy, writable_folder
from anomalens.progress import say
from anomalens.rules.captions import everyday_anomalies
from anomalens.rules.io import load_rulebook, rulebook_lock
from anomalens.tools.perception import Perception, object_tools
from anomalens.tools.rule_induction import (
    SELF_REFERENCED_CONTAMINATION,
    everyday_priors,
    relative_speed_id,
)
from anomalens.tools.scene import Scene


def learn_scene(
    normal: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    fps: float | None = None,
    max_side: int | None = None,
    contamination: float = 0.0,
    objects: bool | None = None,
    progress: bool = True,
) -> Scene:
    """Learn what is normal for a scene from normal videos or frame folders of one camera view, saved to ``out``
    (``rules.yaml`` there is the editable rulebook). ``fps``: the frame rate of frame folders; ``max_side``: the
    analysis resolution (default: the settings'); ``contamination``: the share of object observations that may
    be anomalous (0 for footage known to be normal); ``objects``: also name the moving objects and learn their
    look with the pretrained detector and embedder, when their weights are here (``scene_objects``; default:
    the settings')."""
    settings = load_settings()
    max_side = max_side or settings.max_side
    if out is not None:
        writable_folder(out)
    tools = scene_objects(progress) if (settings.objects if objects is None else objects) else None
    scene = Scene.learn([str(p) for p in normal], max_side=max_side, fps=fps, contamination=contamination,
                        tools=tools, progress=progress)  # fmt: skip
    if out is not None:
        with rulebook_lock(Path(out) / "rules.yaml"):  # the app may be accepting a change to it right now
            _keep_edits(scene, Path(out))
            scene.save(out)
    return scene


def _keep_edits(scene: Scene, folder: Path) -> None:
    """Learning again into a scene folder whose rulebook a person may have edited: its rules.yaml is kept beside
    the new one as ``rules.v<N>.yaml`` (the next free N, ``files.keep_copy``), and rules the person disabled stay
    disabled."""
    path = folder / "rules.yaml"
    if not path.exists():
        return
    try:
        disabled = {r.id for r in load_rulebook(path).rules if not r.enabled}
    except ConfigError:
        disabled = set()  # unreadable as a rulebook: kept as it is, nothing carried over
    kept = keep_copy(path, path.read_bytes())  # byte for byte, whatever it holds
    rules = [r.model_copy(update={"enabled": False}) if r.id in disabled else r for r in scene.rulebook.rules]
    scene.rulebook = scene.rulebook.model_copy(update={"rules": rules})
    still = sum(r.id in disabled for r in rules)
    say(f"{path}: the earlier rulebook is kept as {kept.name}; {still} rule(s) disabled there stay disabled")


def scene_objects(progress: bool = True) -> Perception | None:
    """The detector and embedder that name a new scene's objects and learn their look, or None (said aloud, with
    what to pull) when neither has weights here: the scene then knows motion alone."""
    tools = object_tools()
    if not tools.present:
        say("objects: not named (" + "; ".join(tools.absent.values()) + ")", progress)
        return None
    say("objects: " + ", ".join(tools.backend(kind) for kind in tools.present), progress)
    return tools


def self_referenced_scene(
    video: str | Path, *, out: str | Path | None = None, fps: float | None = None, progress: bool = True
) -> Scene:
    """A scene for a video with no normal footage: its own dominant behaviour is normal (up to
    ``SELF_REFERENCED_CONTAMINATION`` of its objects may not be), and, when the scene names its objects, so is
    what the everyday anomalies say of objects (``rule_induction.everyday_priors``: none of their classes, no one
    running, relative to the video's brisk walkers): a cart seen in most frames is still a cart on a walkway.
    Saved to ``out`` when given."""
    scene = learn_scene([video], fps=fps, contamination=SELF_REFERENCED_CONTAMINATION, progress=progress)
    if scene.objects:
        # A brisk walker: the 90th percentile of people's relative speeds (the median is someone standing still).
        walkers = scene.rulebook.find(relative_speed_id("person"))
        priors = everyday_priors(everyday_anomalies(), walking=walkers.stats.get("p90") if walkers else None)
        scene.rulebook = scene.rulebook.model_copy(update={"rules": [*scene.rulebook.rules, *priors]})
    if out is not None:
        scene.save(out)
    return scene
