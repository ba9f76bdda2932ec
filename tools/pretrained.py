"""Pretrained CPU perception from the model store: COCO detectors (CenterNet, NanoDet) and multi-person pose
(MoveNet MultiPose), TensorFlow.js graph models converted once to ONNX and run by ONNX Runtime (``tools.tfjs``).

Each takes BGR frames of any size, letterboxes them once onto the model's square canvas (``vision.letterbox``:
scaled so the longer side fits, top-left, black elsewhere, as the models' reference outputs were made), and
maps what it finds back to source pixels. Detectors decode their own boxes and apply class-wise NMS; they are
closed-vocabulary: a prompt names one of the 80 COCO classes (``tools/coco.yaml``) or nothing they can find.
Frames go through one at a time: the graphs decode for a batch of one, and a batch of four through CenterNet's
network alone was slower per frame than one at a time on 2 cores (``anomalens eval perception-speed``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalens.errors import ModelStoreError
from anomalens.geometry import nms
from anomalens.modelstore import model_dir
from anomalens.tools.coco import coco, coco_class
from anomalens.tools.tfjs import OnnxGraph, compile_graph
from anomalens.tools.vision import detections, frame_size, letterbox, rgb
from anomalens.types import Evidence, EvidenceKind, Source

SCORE_THRESHOLD = 0.3  # CenterNet scores Ped2's pedestrians 0.4-0.65 (../shared/reference/tfjs/README.md)
NMS_IOU = 0.5
POSE_THRESHOLD = 0.2  # under the 0.4-0.55 MoveNet gives people it sees (vtest frame 300), over most whole-frame guesses
KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)  # fmt: skip


def _graph(folder: Path, stem: str, shape: tuple[int, ...], dtype: str, outputs: list[str]) -> OnnxGraph:
    """The graph ``folder/stem.json``, run by ONNX Runtime (converted the first time, kept in the model store)."""
    path = folder / f"{stem}.json"
    if not path.is_file():
        raise ModelStoreError(f"{folder}: no {stem}.json (a TFJS graph model and its weights are expected there)")
    noise = np.random.default_rng(0).uniform(0, 255, shape).astype(dtype)  # distinct scores: no ties to order
    return compile_graph(path, {"input": noise}, outputs, model_dir() / ".converted")


class _CocoDetector:
    """What both COCO detectors share: prompts to classes, thresholds, NMS, evidence in source pixels."""

    backend = ""
    side = 0

    def __init__(self, graph: OnnxGraph, weights: str):
        self.graph, self.weights = graph, weights

    def knows(self, term: str) -> bool:
        """Whether ``term`` names a class this detector can find."""
        return coco_class(term) is not None

    def detect(
        self,
        image: np.ndarray,
        prompts: Sequence[str] = (),
        box_threshold: float = SCORE_THRESHOLD,
        frame_index: int | None = None,
    ) -> Evidence:
        """``DETECTION`` evidence of the COCO classes ``prompts`` name (every class when none is given)."""
        started = time.perf_counter()
        names = coco()[0]
        canvas, scale = letterbox(image, self.side)
        boxes, scores, classes = self._raw(canvas, box_threshold)
        chosen = scores >= box_threshold
        if prompts:
            wanted = {names.index(c) for p in prompts if (c := coco_class(p)) is not None}
            chosen &= np.isin(classes, list(wanted))
        boxes, scores, classes = boxes[chosen] / scale, scores[chosen], classes[chosen]
        keep = nms(boxes, scores, NMS_IOU, classes)
        label = [names[c] for c in classes[keep]]
        return detections(self.backend, self.weights, started, frame_size(image), boxes[keep], scores[keep], label,
                          frame_index)  # fmt: skip


class CenterNetDetector(_CocoDetector):
    """CenterNet with a MobileNetV3 backbone (COCO-80), 512 px: the graph decodes its own top 100 peaks."""

    backend = "centernet"
    side = 512

    @classmethod
    def load(cls, folder: str | Path) -> CenterNetDetector:
        graph = _graph(Path(folder), "centernet", (1, 512, 512, 3), "float32", ["tower_0/detections"])
        return cls(graph, str(folder))

    def _raw(self, canvas: np.ndarray, minimum: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feed = {"input": canvas[None, :, :, ::-1].astype(np.float32)}  # RGB 0..255
        found = self.graph.run(feed, ["tower_0/detections"])["tower_0/detections"][0]  # decoded by the graph
        return found[:, :4].astype(np.float64), found[:, 4], found[:, 5].astype(int)


class NanoDetDetector(_CocoDetector):
    """NanoDet (GFL head, 416 px, strides 8/16/32): class scores and box distributions, decoded here."""

    backend = "nanodet"
    side = 416
    strides = (8, 16, 32)
    bins = 11  # GFL: each side's distance is a distribution over 0..10 strides
    mean = np.array([103.53, 116.28, 123.675], np.float32)  # BGR, as NanoDet was trained
    std = np.array([57.375, 57.12, 58.395], np.float32)

    outputs = [f"Identity{'' if k == 0 else f'_{k}'}" for k in range(6)]  # scores, then box distributions

    @classmethod
    def load(cls, folder: str | Path) -> NanoDetDetector:
        return cls(_graph(Path(folder), "nanodet", (1, 3, 416, 416), "float32", cls.outputs), str(folder))

    def _raw(self, canvas: np.ndarray, minimum: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, best class scores and classes of the anchors scoring ``minimum`` and up (only those decoded)."""
        feed = {"input": ((canvas.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None].copy()}
        found = self.graph.run(feed, self.outputs)
        boxes, best, classes = [], [], []
        for k, stride in enumerate(self.strides):
            score, distribution = found[self.outputs[k]][0], found[self.outputs[k + 3]][0]
            kept = np.flatnonzero(score.max(axis=1) >= minimum)
            score, distribution = score[kept], distribution.reshape(len(distribution), -1)[kept]
            ys, xs = np.divmod(kept, self.side // stride)
            centres = np.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], axis=1)
            logits = distribution.reshape(-1, 4, self.bins)  # left, top, right, bottom
            weights = np.exp(logits - logits.max(axis=2, keepdims=True))
            distance = (weights / weights.sum(axis=2, keepdims=True)) @ np.arange(self.bins) * stride
            boxes.append(np.concatenate([centres - distance[:, :2], centres + distance[:, 2:]], axis=1))
            best.append(score.max(axis=1))
            classes.append(score.argmax(axis=1))
        return np.concatenate(boxes), np.concatenate(best), np.concatenate(classes)


class MoveNetPose:
    """MoveNet MultiPose Lightning: up to 6 people, each a box and 17 keypoints (``KEYPOINTS``), 256 px."""

    backend = "movenet"
    side = 256

    def __init__(self, graph: OnnxGraph, weights: str):
        self.graph, self.weights = graph, weights

    @classmethod
    def load(cls, folder: str | Path) -> MoveNetPose:
        return cls(_graph(Path(folder), "movenet-multipose", (1, 256, 256, 3), "int32", ["Identity"]), str(folder))

    def estimate(
        self, image: np.ndarray, threshold: float = POSE_THRESHOLD, frame_index: int | None = None
    ) -> Evidence:
        """``POSE`` evidence: the people found, with their boxes and keypoints (x, y, score) in source pixels."""
        started = time.perf_counter()
        canvas, scale = letterbox(image, self.side)
        people = self.graph.run({"input": rgb(canvas)[None].astype(np.int32)}, ["Identity"])["Identity"][0]
        people = people[people[:, 55] >= threshold]
        points = people[:, :51].reshape(-1, 17, 3)  # (y, x, score), normalised to the canvas
        to_source = self.side / scale
        keypoints = np.stack([points[..., 1] * to_source, points[..., 0] * to_source, points[..., 2]], axis=2)
        ymin, xmin, ymax, xmax = (people[:, 51:55] * to_source).T
        width, height = frame_size(image)
        boxes = np.clip(np.stack([xmin, ymin, xmax, ymax], axis=1), 0, [width, height, width, height])
        keypoints[..., 0] = keypoints[..., 0].clip(0, width)
        keypoints[..., 1] = keypoints[..., 1].clip(0, height)
        return Evidence(
            kind=EvidenceKind.POSE,
            source=Source(tool="pose", backend=self.backend, weights=Path(self.weights).name,
                          latency_s=time.perf_counter() - started),  # fmt: skip
            frame_index=frame_index,
            frame_size=(width, height),
            boxes=boxes.astype(np.float64),
            scores=people[:, 55].astype(np.float64),
            labels=["person"] * len(people),
            class_names=["person"] * len(people),
            class_scores=people[:, 55].astype(np.float64),
            keypoints=keypoints.astype(np.float64),
        )
