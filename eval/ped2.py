"""UCSD Ped2 benchmark: learn the scene from the 16 training videos, audit the 12 test videos, score.

Every setting is fixed a priori (the defaults of the product); Ped2's test labels are read only to score.
Frame rate: UCSD Ped2 was recorded at 10 fps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from anomalens.errors import AnomalensError
from anomalens.eval.metrics import (
    average_precision,
    best_f1,
    macro_auc,
    per_video_normalised_auc,
    rbdc_tbdc,
    roc_auc,
)
from anomalens.events import smooth, smoothing_width
from anomalens.geometry import box_iou
from anomalens.pipelines import learn_scene
from anomalens.pipelines.audit import screen_video
from anomalens.pipelines.scene import self_referenced_scene
from anomalens.progress import track
from anomalens.tools.perception import object_tools
from anomalens.tools.screening import SMOOTH_SECONDS
from anomalens.video import natural_key

PED2_FPS = 10.0
PIXEL_GRID = (90, 60)  # pixel AUROC on a 1/4-resolution grid: 10.9 M pixels instead of 174 M
# Each cue's own frame AUROC is reported beside the fusion: the objects' novelty (their density), the rules they
# and their frames break, and the objects' look alone.
CUES = ("novelty", "rules", "look")


def _videos(folder: Path) -> list[Path]:
    videos = sorted((p for p in folder.iterdir() if p.is_dir()), key=natural_key)
    if not videos:
        raise AnomalensError(f"{folder}: no video folders")
    return videos


def _labels(data: Path) -> dict:
    """Ped2's frame labels per test video; a clear error for a folder that is not Ped2's."""
    path = data / "labels.json"
    if not path.is_file():
        raise AnomalensError(f"{data}: not a UCSD Ped2 folder (no labels.json); see ../shared/data/README.md")
    return json.loads(path.read_text())


def truth_regions(masks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame: boxes of the mask's connected regions and track ids linking overlapping regions over time."""
    out, previous, next_id = [], (np.zeros((0, 4)), np.zeros(0, dtype=int)), 0
    for mask in masks:
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:count]], dtype=np.float64).reshape(-1, 4)
        ids = np.full(len(boxes), -1)
        overlap = box_iou(boxes, previous[0])
        while overlap.size and overlap.max() > 0:
            i, k = np.unravel_index(int(np.argmax(overlap)), overlap.shape)
            ids[i] = previous[1][k]
            overlap[i, :] = 0
            overlap[:, k] = 0
        for i in np.flatnonzero(ids < 0):
            ids[i], next_id = next_id, next_id + 1
        out.append((boxes, ids))
        previous = (boxes, ids)
    return out


def run_ped2(data: str | Path, *, objects: bool | None = None, progress: bool = True) -> dict:
    data = Path(data)
    labels = _labels(data)
    started = time.perf_counter()
    scene = learn_scene(_videos(data / "train"), fps=PED2_FPS, objects=objects, progress=progress)
    train_seconds = time.perf_counter() - started
    tools = object_tools(scene.objects) if scene.objects else None

    test_videos = _videos(data / "test")
    decode_start = time.perf_counter()
    decoded = sum(1 for v in test_videos for _ in scene.open(v))
    decode_seconds = time.perf_counter() - decode_start
    every_frame_fps = _detector_every_frame_fps(scene, test_videos, tools.detector) if tools is not None else None

    per_video, pixel_scores, pixel_truth, detections, regions = {}, [], [], [], []
    cues: dict[str, list[np.ndarray]] = {name: [] for name in CUES}
    pipeline_seconds = 0.0
    for video in track(test_videos, "auditing Ped2 test videos", enabled=progress):
        maps: list[np.ndarray] = []

        video_cues: dict[str, list[float]] = {name: [] for name in CUES}

        def observe(frame, evidence, maps=maps, detections=detections, video_cues=video_cues):
            maps.append(cv2.resize(evidence.anomaly_map, PIXEL_GRID, interpolation=cv2.INTER_AREA))
            detections.append((evidence.boxes, evidence.scores))
            for name, value in cue_values(evidence).items():
                video_cues[name].append(value)

        source = scene.open(video)
        result = screen_video(source, scene, observe=observe, tools=tools, progress=False)
        pipeline_seconds += result.seconds
        truth = np.asarray(labels[video.name])
        if len(truth) != len(result.scores):
            raise AnomalensError(f"{video}: {len(result.scores)} frames but {len(truth)} labels")
        per_video[video.name] = (truth, result.scores)
        width = smoothing_width(SMOOTH_SECONDS, source.effective_fps)  # the fused score's smoothing
        for name, values in video_cues.items():
            cues[name].append(smooth(np.asarray(values), width))
        masks = [
            cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127
            for p in sorted((data / "test_masks" / video.name).glob("*.png"), key=natural_key)
        ]
        regions.extend(truth_regions(masks))
        pixel_truth.extend(cv2.resize(m.astype(np.uint8), PIXEL_GRID, interpolation=cv2.INTER_NEAREST) for m in masks)
        pixel_scores.extend(maps)

    all_labels = np.concatenate([v[0] for v in per_video.values()])
    all_scores = np.concatenate([v[1] for v in per_video.values()])
    macro, per_video_auc = macro_auc(per_video)
    f1, f1_threshold = best_f1(all_labels, all_scores)
    rbdc, tbdc = rbdc_tbdc(detections, regions)
    frames = len(all_labels)
    return {
        "dataset": "ucsd_ped2",
        "frames": frames,
        "frame_auc": roc_auc(all_labels, all_scores),
        "frame_auc_macro": macro,
        "frame_auc_normalised_per_video": per_video_normalised_auc(per_video),
        "frame_auc_per_video": per_video_auc,
        "frame_aupr": average_precision(all_labels, all_scores),
        "frame_f1": f1,
        "frame_f1_threshold": f1_threshold,
        "frame_f1_at_1": _f1_at(all_labels, all_scores, 1.0),
        "pixel_auroc": roc_auc(
            np.concatenate([p.ravel() for p in pixel_truth]), np.concatenate([p.ravel() for p in pixel_scores])
        ),
        "cue_frame_auc": {name: roc_auc(all_labels, np.concatenate(parts)) for name, parts in cues.items()},
        "rbdc": rbdc,
        "tbdc": tbdc,
        "pipeline_fps": frames / pipeline_seconds,
        "decode_fps": decoded / decode_seconds,
        "pipeline_over_decode": (frames / pipeline_seconds) / (decoded / decode_seconds),
        "detector_every_frame_fps": every_frame_fps,
        "detector_every_frame_over_decode": every_frame_fps / (decoded / decode_seconds) if every_frame_fps else None,
        "train_seconds": train_seconds,
        "rules": len(scene.rulebook.rules),
        "objects": scene.objects,
        "seconds": time.perf_counter() - started,
    }


def run_ped2_zero_shot(data: str | Path, *, progress: bool = True) -> dict:
    """Each Ped2 test video explained with no normal footage, as ``explain VIDEO`` does: normality learned from
    the video itself plus the everyday anomalies' classes; frame AUROC and the events of each video."""
    data = Path(data)
    labels = _labels(data)
    started = time.perf_counter()
    per_video, events = {}, {}
    for video in track(_videos(data / "test"), "explaining Ped2 test videos zero-shot", enabled=progress):
        scene = self_referenced_scene(video, fps=PED2_FPS, progress=False)
        result = screen_video(scene.open(video), scene, self_referenced=True, progress=False)
        per_video[video.name] = (np.asarray(labels[video.name]), result.scores)
        events[video.name] = [
            {"frames": [e.start_frame, e.end_frame], "rules": e.rule_ids, "summary": e.summary} for e in result.events
        ]
    macro, per_video_auc = macro_auc(per_video)
    return {
        "dataset": "ucsd_ped2 (zero-shot: no training footage)",
        "frame_auc": roc_auc(np.concatenate([v[0] for v in per_video.values()]),
                             np.concatenate([v[1] for v in per_video.values()])),  # fmt: skip
        "frame_auc_macro": macro,
        "frame_auc_normalised_per_video": per_video_normalised_auc(per_video),
        "frame_auc_per_video": per_video_auc,
        "videos_with_events": sum(bool(e) for e in events.values()),
        "videos": len(events),
        "events": events,
        "seconds": time.perf_counter() - started,
    }


def _detector_every_frame_fps(scene, videos: list[Path], detector) -> float:
    """Frames per second of decoding plus the detector on every whole frame: what the cascade saves."""
    started, frames = time.perf_counter(), 0
    for video in videos:
        for frame in scene.open(video):
            detector.detect(frame.image, ())
            frames += 1
    return frames / (time.perf_counter() - started)


def cue_values(evidence) -> dict[str, float]:
    """The fused score's parts for one frame (each the largest over its objects): their novelty, the rules broken
    (severity), their look."""
    def most(name: str) -> float:
        return max((m.value for m in evidence.measurements if m.name == name), default=0.0)

    return {"novelty": most("novelty"), "rules": max((b.severity for b in evidence.breaches()), default=0.0),
            "look": most("look")}  # fmt: skip


def _f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of the product's own decision rule (score above ``threshold``)."""
    predicted = scores > threshold
    true_pos = float(np.sum(predicted & labels.astype(bool)))
    return 2 * true_pos / max(float(predicted.sum() + labels.sum()), 1.0)
