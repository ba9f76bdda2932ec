"""``anomalens demo``: the main job end to end on a synthetic walkway scene with known anomalies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalens.agents.llm import LLM
from anomalens.eval.metrics import roc_auc
from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene
from anomalens.pipelines import audit, learn_scene
from anomalens.report import GroundTruth, GroundTruthEvent
from anomalens.tools.screening import ScreeningResult

DEMO_ANOMALIES = (
    Anomaly("cyclist", 15),
    Anomaly("lawn_crossing", 80),
    Anomaly("wrong_way", 230),
    Anomaly("loitering", 330),
    Anomaly("crowd", 520),
    Anomaly("left_object", 620),
)
DEMO_FRAMES = 800
NORMAL_FRAMES = 600


@dataclass
class DemoResult:
    report_json: Path
    report_html: Path
    metrics: dict[str, float]
    events: int


def ground_truth_metrics(
    result: ScreeningResult, labels: np.ndarray, truth: list[GroundTruthEvent]
) -> dict[str, float]:
    """Frame AUROC of the smoothed scores and how many true events an event overlaps."""

    def overlaps(e, g) -> bool:
        return e.start_frame <= g.end_frame and g.start_frame <= e.end_frame

    return {
        "frame_auc": roc_auc(labels[result.frame_indices], result.scores),
        "true_events_found": float(sum(any(overlaps(e, g) for e in result.events) for g in truth)),
        "true_events": float(len(truth)),
        "false_events": float(sum(not any(overlaps(e, g) for g in truth) for e in result.events)),
    }


def run_demo(
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    explainer: str | None = None,
    llm: LLM | None = None,
) -> DemoResult:
    """Render a normal clip and a test clip of one walkway, learn the scene, audit the test clip, report
    (events explained by the agent with ``llm`` or the one ``explainer`` chooses, else deterministically)."""
    out = Path(out_dir)
    scene_files = out / "scene"
    normal = write_scene(SceneSpec(n_frames=NORMAL_FRAMES, seed=2 * seed + 1, camera_seed=seed), scene_files / "normal")
    test = write_scene(
        SceneSpec(n_frames=DEMO_FRAMES, seed=2 * seed + 2, camera_seed=seed, anomalies=DEMO_ANOMALIES),
        scene_files / "test",
    )
    # Motion alone: the synthetic walkway is painted shapes, in which the COCO detector sees kites.
    scene = learn_scene([normal.video], out=out / "learned", objects=False, progress=progress)
    labels = np.asarray(json.loads(test.labels.read_text())["labels"])
    truth = [GroundTruthEvent(**e) for e in json.loads(test.events.read_text())]
    result = audit(
        test.video,
        scene,
        out=out,
        title="anomalens demo: synthetic walkway",
        ground_truth=GroundTruth(labels=labels.tolist(), events=truth),
        metrics=lambda r: ground_truth_metrics(r, labels, truth),
        explainer=explainer,
        llm=llm,
        progress=progress,
    )
    json_path, html_path = result.files
    return DemoResult(json_path, html_path, result.report.metrics, len(result.events))
