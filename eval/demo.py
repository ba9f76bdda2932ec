"""``anomalens demo``: the main job end to end on a synthetic walkway scene with known anomalies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalens.agents.screening import build_report, screen
from anomalens.eval.metrics import roc_auc
from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene
from anomalens.progress import track
from anomalens.report import GroundTruth, GroundTruthEvent, write_report
from anomalens.tools.occupancy import OccupancyScorer
from anomalens.video import FrameSource

DEMO_ANOMALIES = (
    Anomaly("cyclist", 15),
    Anomaly("lawn_crossing", 80),
    Anomaly("wrong_way", 230),
    Anomaly("loitering", 330),
    Anomaly("crowd", 520),
    Anomaly("left_object", 620),
)
DEMO_FRAMES = 800
NORMAL_FRAMES = 300


@dataclass
class DemoResult:
    report_json: Path
    report_html: Path
    metrics: dict[str, float]
    events: int


def ground_truth_metrics(result, labels: np.ndarray, truth: list[GroundTruthEvent]) -> dict[str, float]:
    """Frame AUROC of the smoothed scores and how many true events an event overlaps."""
    hit = [any(e.start_frame <= g.end_frame and g.start_frame <= e.end_frame for e in result.events) for g in truth]
    false = [
        e for e in result.events if not any(e.start_frame <= g.end_frame and g.start_frame <= e.end_frame for g in truth)
    ]
    return {
        "frame_auc": roc_auc(labels[result.frame_indices], result.scores),
        "true_events_found": float(sum(hit)),
        "true_events": float(len(truth)),
        "false_events": float(len(false)),
    }


def run_demo(out_dir: str | Path, seed: int = 0, progress: bool = True) -> DemoResult:
    """Render a normal clip and a test clip of one walkway, learn the scene, screen the test, report."""
    out = Path(out_dir)
    scene = out / "scene"
    normal = write_scene(SceneSpec(n_frames=NORMAL_FRAMES, seed=2 * seed + 1, camera_seed=seed), scene / "normal")
    test = write_scene(
        SceneSpec(n_frames=DEMO_FRAMES, seed=2 * seed + 2, camera_seed=seed, anomalies=DEMO_ANOMALIES), scene / "test"
    )
    normal_frames = FrameSource(normal.video)
    scorer = OccupancyScorer().fit(
        track(normal_frames, "learning the scene", total=len(normal_frames), enabled=progress)
    )
    result = screen(FrameSource(test.video), scorer, progress=progress)

    labels = np.asarray(json.loads(test.labels.read_text())["labels"])
    truth = [GroundTruthEvent(**e) for e in json.loads(test.events.read_text())]
    metrics = ground_truth_metrics(result, labels, truth)
    report, keyframes = build_report(
        result,
        title="anomalens demo: synthetic walkway",
        scorer="occupancy (scene-trained on the normal clip)",
        ground_truth=GroundTruth(labels=labels.tolist(), events=truth),
        metrics=metrics,
    )
    json_path, html_path = write_report(report, keyframes, out)
    return DemoResult(json_path, html_path, metrics, len(result.events))
