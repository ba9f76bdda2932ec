"""Zero-shot and few-shot inspection of images with no scene model, using whatever tools are present.

Methods, best first, by what this machine has:

1. ``saa``: grounded detector prompts -> SAM masks, filtered (SAA+, Cao et al. 2023): boxes larger than
   ``MAX_BOX_FRACTION`` of the image are dropped (a detector asked for "defect" often boxes the whole object),
   each region scored by its detector confidence, times its CLIP anomaly probability when CLIP is present;
2. ``winclip``: CLIP's WinCLIP map and score (zero-shot);
3. ``patch-knn``: pretrained CNN patch features (``tools.patch_knn``): few-shot against a few normal images
   (PatchCore), or batched zero-shot, each image against the others of the batch (MuSc), given at least
   ``patch_knn.MIN_BATCH`` images; a batch's threshold is where a score stands out from the batch's;
4. ``patch-novelty``: the embedded detector (no weights): self-referenced zero-shot, or few-shot against a few
   normal images.

Each region becomes verified claims (``agents.image_claims``) through the ``explain`` hook the pipeline gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from anomalens.errors import MediaError
from anomalens.progress import track
from anomalens.prompts import load as load_prompts
from anomalens.report import ImageFinding
from anomalens.tools.patch_knn import (
    MIN_BATCH,
    PatchKNN,
    PatchMap,
    mutual_scores,
    relative_to_batch,
)
from anomalens.tools.patch_novelty import PatchNovelty
from anomalens.tools.perception import Perception
from anomalens.types import Evidence, EvidenceKind, Measurement, Source

MAX_BOX_FRACTION = 0.3  # SAA+'s filter: a "defect" box over 30% of the image is the object itself
MAX_REGIONS = 5  # regions described per image
SAA_BOX_THRESHOLD = 0.2
WINCLIP_THRESHOLD = 0.5  # anomalous when the anomalous prompts are the likelier class
NOVELTY_THRESHOLD = 1.0  # patch maps come in units of their threshold (the normal extreme, or a batch's level)
PEAK_UNITS = {
    "saa": "confidence",
    "winclip": "probability of the anomalous prompts",
    "patch-knn": "times the threshold",
    "patch-novelty": "times the normal extreme",
}
# What a method saw at an image point (x, y), in words ("is closest to ...", "shows ..."), or None.
Look = Callable[[int, int], str | None]
# Makes a finding's claims, verdicts and sentences from what the method saw (``agents.image_claims.explained``).
Explain = Callable[[ImageFinding, Look | None], ImageFinding]


def method_for(perception: Perception, prompts: Sequence[str] = (), images: int = 1, shots: int = 0) -> str:
    """The best method this machine can run on ``images`` images with ``shots`` normal ones: SAA+ needs a
    segmenter and a detector that can look for the ``prompts`` (default: the defect prompts), which COCO's closed
    vocabulary cannot; patch features need normal images or a batch of ``MIN_BATCH``."""
    detector = perception.detector
    prompts = list(prompts or load_prompts("zero_shot")["defect_prompts"])
    if detector is not None and perception.segmenter is not None and any(detector.knows(p) for p in prompts):
        return "saa"
    if perception.clip is not None:
        return "winclip"
    if perception.embedder is not None and (shots or images >= MIN_BATCH):
        return "patch-knn"
    return "patch-novelty"


def mode_of(method: str, shots: int) -> str:
    """How normality was known, in words for the report and the terminal."""
    if shots:
        return f"few-shot against {shots} normal image(s)"
    return "zero-shot, each image against the others" if method == "patch-knn" else "zero-shot"


def read_image(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(path, "not a readable image")
    return image


def regions(anomaly_map: np.ndarray, threshold: float) -> list[tuple[np.ndarray, float, int]]:
    """Connected areas at or above ``threshold``: (xyxy box, peak value, area px), strongest first."""
    above = (anomaly_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    found = []
    for k in range(1, count):
        x, y, w, h, area = stats[k]
        found.append((np.array([x, y, x + w, y + h], float), float(anomaly_map[labels == k].max()), int(area)))
    return sorted(found, key=lambda r: -r[1])[:MAX_REGIONS]


_DIRECTIONS = {
    "brightness": ("brighter", "darker"),
    "darkest point": ("no dark point where the surface has some", "a dark point"),
    "broad brightness": ("a brighter area", "a darker area"),
    "edges": ("more edges", "fewer edges"),
    "strongest edge": ("a sharper edge", "softer edges"),
    "small blobs": ("a small dark spot", "a small bright spot"),
    "large blobs": ("a large dark patch", "a large bright patch"),
    "local contrast": ("more local contrast", "less local contrast"),
}


def _novelty_words(deviations: dict[str, float]) -> str:
    top = sorted(deviations.items(), key=lambda kv: -abs(kv[1]))[:2]
    parts = [f"{_DIRECTIONS[name][0 if value > 0 else 1]} ({value:+.1f} spreads)" for name, value in top]
    return " and ".join(parts)


def _regions_of(anomaly_map: np.ndarray, threshold: float) -> tuple[list, list[str]]:
    """The regions of ``anomaly_map`` at or above ``threshold`` and their display labels."""
    found = regions(anomaly_map, threshold)
    return found, [f"region {k}" for k in range(1, len(found) + 1)]


def _image_evidence(
    image: np.ndarray, source: Source, anomaly_map: np.ndarray, score: float, found: list, labels: list[str], **extra
) -> Evidence:
    """``IMAGE`` evidence of the regions ``found`` ((box, peak, area px) each, as ``regions`` gives them),
    numbered from 1 in ``track_ids``, each with its ``area`` measurement."""
    height, width = image.shape[:2]
    return Evidence(
        kind=EvidenceKind.IMAGE,
        source=source,
        frame_size=(width, height),
        anomaly_map=anomaly_map,
        frame_score=score,
        boxes=np.array([r[0] for r in found]).reshape(-1, 4),
        scores=np.array([r[1] for r in found]),
        labels=labels,
        track_ids=np.arange(1, len(found) + 1),
        measurements=[Measurement(name="area", value=float(r[2]), unit="px", object_index=i)
                      for i, r in enumerate(found)],
        **extra,
    )


class ImageInspector:
    """Scores images with the best method available for ``images`` images and ``shots`` normal ones (``fit``
    them: few-shot). ``explain(finding, look)`` turns each finding's regions into claims and sentences
    (``agents.image_claims.explained``); ``look(x, y)`` says in words what the method saw at a point."""

    def __init__(
        self, perception: Perception | None = None, prompts: Sequence[str] | None = None, images: int = 1,
        shots: int = 0, explain: Explain | None = None,
    ):
        self.perception = perception or Perception()
        self.prompts = list(prompts or load_prompts("zero_shot")["defect_prompts"])
        self.method = method_for(self.perception, self.prompts, images, shots)
        self.explain = explain
        self.box_threshold = SAA_BOX_THRESHOLD
        self.novelty = PatchNovelty()
        self.patches = PatchKNN(self.perception.embedder) if self.method == "patch-knn" else None
        self.normal: list[str] = []
        self.threshold_basis = ""  # patch-knn: what its threshold is, in words, once images were inspected
        self._normal_windows: np.ndarray | None = None

    def fit(self, normal: Sequence[str | Path]) -> ImageInspector:
        """Few-shot: remember what the normal image files look like."""
        return self.fit_arrays([read_image(p) for p in normal], [str(p) for p in normal])

    def fit_arrays(self, normal: Sequence[np.ndarray], names: Sequence[str] | None = None) -> ImageInspector:
        if self.method == "saa":  # it scores detections: normal images calibrate nothing it uses
            raise ValueError("few-shot normal images work with the winclip and patch methods, not saa")
        self.normal = list(names or [f"normal image {k}" for k in range(len(normal))])
        if self.method == "patch-knn":
            self.patches.fit(normal)
            self.threshold_basis = "the normal images' extreme"  # until a batch of images raises it
        elif self.method == "patch-novelty":
            self.novelty.fit(normal, self.normal)
        else:
            self._normal_windows = np.concatenate([self.perception.clip.window_embeddings(i) for i in normal])
        return self

    @property
    def compared_with(self) -> str:
        """What each image is compared with, in words."""
        if self.method in ("saa", "winclip"):
            return "what the defect prompts describe"
        if len(self.normal) == 1:
            return "the normal image"
        if self.normal:
            return f"the {len(self.normal)} normal images"
        return "the other images of the batch" if self.method == "patch-knn" else "the rest of this image"

    @property
    def mode(self) -> str:
        """How normality was known and, once known, what the threshold is, in words for the report."""
        mode = mode_of(self.method, len(self.normal))
        return f"{mode}; threshold: {self.threshold_basis}" if self.threshold_basis else mode

    def inspect(self, path: str | Path) -> ImageFinding:
        return self.inspect_array(read_image(path), str(path))

    def inspect_all(self, paths: Sequence[str | Path], progress: bool = True) -> list[ImageFinding]:
        """Every image of ``paths``. Patch features score them together, as one batch, and set the threshold from
        the batch's scores: zero-shot (at least ``MIN_BATCH`` images), each image against the others; few-shot,
        from ``MIN_BATCH`` images on."""
        if self.method == "patch-knn" and (not self.normal or len(paths) >= MIN_BATCH):
            images = [read_image(p) for p in paths]
            started = time.perf_counter()
            if self.normal:
                scoring = track(images, "scoring against the normal images", enabled=progress)
                maps = [self.patches.score(image) for image in scoring]
            else:
                maps = mutual_scores(self.perception.embedder, images, progress)
            extreme = 1.0 if self.normal else 0.0  # few-shot maps come in units of the normal images' extreme
            maps, level = relative_to_batch(maps, extreme)
            self.threshold_basis = (
                f"where a score stands out from the {len(images)} images inspected together"
                if level > extreme else "the normal images' extreme"
            )  # fmt: skip
            latency = (time.perf_counter() - started) / len(images)
            return [
                self._finding(str(p), *self._patch_knn(image, found), latency)
                for p, image, found in zip(paths, images, maps)
            ]
        inspecting = track(paths, f"inspecting ({self.method})", total=len(paths), enabled=progress)
        return [self.inspect(p) for p in inspecting]

    def inspect_array(self, image: np.ndarray, name: str = "image") -> ImageFinding:
        started = time.perf_counter()
        if self.method == "patch-knn":
            if not self.normal:
                raise ValueError("zero-shot patch features score a batch of images: use inspect_all")
            found = self._patch_knn(image, self.patches.score(image))
        else:
            run = {"saa": self._saa, "winclip": self._winclip, "patch-novelty": self._patch_novelty}[self.method]
            found = run(image)
        return self._finding(name, *found, time.perf_counter() - started)

    def _finding(self, name: str, evidence: Evidence, threshold: float, look: Look | None, latency: float):
        evidence = evidence.model_copy(update={"source": evidence.source.model_copy(update={"latency_s": latency})})
        finding = ImageFinding(
            image=name,
            method=self.method,
            score=float(evidence.frame_score),
            threshold=threshold,
            anomalous=bool(evidence.frame_score >= threshold),
            evidence=evidence,
            unit=PEAK_UNITS[self.method],
            compared_with=self.compared_with,
        )
        return self.explain(finding, look) if self.explain is not None else finding

    def _patch_knn(self, image: np.ndarray, found: PatchMap):
        backend = f"{self.perception.embedder.backend}, {'few-shot' if self.normal else 'batched zero-shot'}"
        evidence = _image_evidence(image, Source(tool="patch-knn", backend=backend), found.anomaly_map, found.score,
                                   *_regions_of(found.anomaly_map, NOVELTY_THRESHOLD))
        look = None
        if self.normal:

            def look(x: int, y: int) -> str:
                return f"is closest to a patch of the normal image {Path(self.normal[found.nearest_normal(x, y)]).name}"

        return evidence, NOVELTY_THRESHOLD, look

    def _patch_novelty(self, image: np.ndarray):
        novelty = self.novelty.score(image)
        source = Source(tool="patch-novelty", backend="few-shot" if self.novelty.few_shot else "self-referenced")
        evidence = _image_evidence(image, source, novelty.anomaly_map, novelty.score,
                                   *_regions_of(novelty.anomaly_map, NOVELTY_THRESHOLD))

        def look(x: int, y: int) -> str:
            return f"shows {_novelty_words(novelty.deviations(x, y))}"

        return evidence, NOVELTY_THRESHOLD, look

    def _winclip(self, image: np.ndarray):
        scored = self.perception.clip.score(image, subject="object", normal_windows=self._normal_windows)
        evidence = _image_evidence(image, scored.source, scored.anomaly_map, scored.frame_score,
                                   *_regions_of(scored.anomaly_map, WINCLIP_THRESHOLD))
        return evidence, WINCLIP_THRESHOLD, None

    def _saa(self, image: np.ndarray):
        height, width = image.shape[:2]
        detected = self.perception.detector.detect(image, self.prompts, box_threshold=self.box_threshold)
        area = (detected.boxes[:, 2] - detected.boxes[:, 0]) * (detected.boxes[:, 3] - detected.boxes[:, 1])
        keep = np.flatnonzero(area <= MAX_BOX_FRACTION * width * height)[:MAX_REGIONS]
        boxes, scores = detected.boxes[keep], detected.scores[keep]
        labels = [detected.labels[k] for k in keep]
        segmented = self.perception.segmenter.segment(image, boxes=boxes, labels=labels)
        masks = segmented.masks if len(keep) else np.zeros((0, height, width), bool)
        if self.perception.clip is not None and len(keep):
            crops = [
                image[int(y1) : max(int(y2), int(y1) + 1), int(x1) : max(int(x2), int(x1) + 1)]
                for x1, y1, x2, y2 in boxes
            ]
            scores = scores * self.perception.clip.anomaly_probability(
                self.perception.clip.encoder.encode_images(crops), "object"
            )
        anomaly_map = np.zeros((height, width), np.float32)
        for mask, score in zip(masks, scores):
            anomaly_map[mask] = np.maximum(anomaly_map[mask], score)
        found = [(box, float(score), int(mask.sum())) for box, score, mask in zip(boxes, scores, masks)]
        source = Source(tool="saa", backend=f"{detected.source.backend}+{segmented.source.backend}")
        named = [f"region {k}: {label}" for k, label in enumerate(labels, 1)]
        evidence = _image_evidence(image, source, anomaly_map, float(scores.max()) if len(scores) else 0.0, found,
                                   named, masks=masks)

        def look(x: int, y: int) -> str | None:
            inside = [label for box, label in zip(boxes, labels) if box[0] <= x <= box[2] and box[1] <= y <= box[3]]
            return f"is where the detector found '{inside[0]}' and SAM outlines it" if inside else None

        return evidence, self.box_threshold, look
