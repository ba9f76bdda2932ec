"""Explaining with no scene model, assembled: images are inspected with the best method this machine can run
(zero-shot, or few-shot against normal images); a video learns its normality from normal footage or from
itself, then is audited."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from anomalens.agents.image_claims import explained
from anomalens.errors import AnomalensError
from anomalens.pipelines.audit import Audit, audit
from anomalens.pipelines.scene import learn_scene, self_referenced_scene
from anomalens.progress import say
from anomalens.report import ImageReport, write_image_report
from anomalens.tools.inspect import ImageInspector, method_for, mode_of, read_image
from anomalens.tools.perception import Perception, image_tools
from anomalens.video import IMAGE_SUFFIXES


def inspect_images(
    images: Sequence[str | Path],
    normal: Sequence[str | Path] = (),
    perception: Perception | None = None,
    prompts: Sequence[str] | None = None,
    progress: bool = True,
) -> ImageReport:
    """Inspect ``images`` (few-shot when ``normal`` images are given) into one report."""
    started = time.perf_counter()
    inspector = ImageInspector(perception, prompts, images=len(images), shots=len(normal), explain=explained)
    if normal:
        inspector.fit(normal)
    findings = inspector.inspect_all(images, progress)
    return ImageReport(
        title=f"anomalens: {len(findings)} image(s)",
        method=inspector.method,
        mode=inspector.mode,
        normal=inspector.normal,
        findings=findings,
        absent_tools=inspector.perception.absent,
        seconds=time.perf_counter() - started,
    )


def explain(
    inputs: Sequence[str | Path],
    *,
    out: str | Path,
    normal: Sequence[str | Path] = (),
    prompts: Sequence[str] | None = None,
    fps: float | None = None,
    explainer: str | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> ImageReport | Audit:
    """Find and explain anomalies in ``inputs`` (one or more images, or one video or frame folder) with no scene
    model, writing the report to ``out``.

    Images: with the foundation tools whose weights are present, else the embedded patch-novelty detector;
    few-shot against ``normal`` images when given. A video: normality is learned from ``normal`` footage, or
    from the video itself (its dominant behaviour), saved in ``out/scene``, then the video is audited.
    ``fresh``: the audit does not reuse the work an earlier run kept in ``out`` (see ``audit``).
    """
    paths = [Path(p) for p in inputs]
    images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    if images and len(images) != len(paths):
        raise AnomalensError("give either images or one video/frame folder, not both")
    if images:
        perception = image_tools()
        for kind, why in perception.absent.items():
            say(f"{kind}: not used ({why}; see `anomalens models list`)", progress)
        method = method_for(perception, prompts or (), len(images), len(normal))
        say(f"method: {method}, {mode_of(method, len(normal))}", progress)
        report = inspect_images(images, normal, perception, prompts, progress)
        write_image_report(report, {f.image: read_image(f.image) for f in report.findings}, out)
        return report
    if len(paths) != 1:
        raise AnomalensError(f"give one video or frame folder at a time, not {len(paths)}")
    how = "the normal footage given" if normal else "the footage itself (self-referenced: its dominant behaviour)"
    say(f"learning normality from {how}", progress)
    if normal:
        scene = learn_scene(list(normal), out=Path(out) / "scene", fps=fps, progress=progress)
    else:
        scene = self_referenced_scene(paths[0], out=Path(out) / "scene", fps=fps, progress=progress)
    return audit(
        paths[0], scene, out=out, fps=fps, explainer=explainer, self_referenced=not normal, fresh=fresh,
        progress=progress,
    )
