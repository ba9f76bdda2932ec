"""Promptable segmentation with SAM: boxes and/or points -> masks at frame resolution.

The image embedding (SAM's expensive ViT pass) is computed once per frame and reused for every prompt on that
frame; ``embeddings_computed`` counts how often it ran. Backends: transformers' ``SamModel`` and the original
``segment-anything`` package.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from anomalens.errors import ModelStoreError
from anomalens.tools.vision import clip_boxes, device, frame_size, rgb
from anomalens.types import Evidence, EvidenceKind, Source
from anomalens.weights import resolve


def _fingerprint(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


def _prompts(boxes, points, size) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Checked prompts: boxes (N, 4) xyxy pixels; points (N, 2) xy pixels, one foreground point per object."""
    if boxes is None and points is None:
        raise ValueError("segmentation needs box or point prompts")
    boxes = None if boxes is None else clip_boxes(boxes, size)
    if points is not None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if boxes is not None and len(points) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(points)} points: give one point per box")
    return boxes, points


class _Segmenter:
    backend = ""

    def __init__(self, weights: str, device_name: str):
        self.weights, self.device = weights, device_name
        self._cached: tuple[str, object] | None = None
        self.embeddings_computed = 0

    def _embedding(self, image: np.ndarray):
        key = _fingerprint(image)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._embed(image))
            self.embeddings_computed += 1
        return self._cached[1]

    def segment(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: list[str] | None = None,
        frame_index: int | None = None,
    ) -> Evidence:
        """One mask per box (or per point when no boxes), at the frame's resolution, scored by SAM's predicted IoU."""
        started = time.perf_counter()
        size = frame_size(image)
        boxes, points = _prompts(boxes, points, size)
        count = len(boxes) if boxes is not None else len(points)
        if count == 0:
            masks, scores = np.zeros((0, size[1], size[0]), bool), np.zeros(0)
        else:
            masks, scores = self._predict(image, self._embedding(image), boxes, points)
        if boxes is None:
            boxes = np.array([_mask_box(m, p) for m, p in zip(masks, points)]).reshape(-1, 4)
        return Evidence(
            kind=EvidenceKind.SEGMENTATION,
            source=Source(
                tool="segment",
                backend=self.backend,
                weights=Path(self.weights).name,
                latency_s=time.perf_counter() - started,
            ),
            frame_index=frame_index,
            frame_size=size,
            boxes=boxes,
            scores=scores,
            labels=labels if labels is not None else ["object"] * count,
            masks=masks,
        )


def _mask_box(mask: np.ndarray, point: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [point[0], point[1], point[0], point[1]]
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


class SamSegmenter(_Segmenter):
    """SAM through transformers (``SamModel`` and ``SamProcessor``)."""

    backend = "sam"

    def __init__(self, model, processor, weights: str, device_name: str):
        super().__init__(weights, device_name)
        self.model, self.processor = model, processor

    @classmethod
    def load(cls, weights: str | Path | None = None, device_name: str | None = None) -> SamSegmenter:
        from transformers import SamModel, SamProcessor

        path = resolve(weights, "segmenter:sam")
        try:
            model = SamModel.from_pretrained(path, local_files_only=True)
            processor = SamProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ModelStoreError(f"{path}: cannot load a SAM model: {error}") from None
        chosen = device(device_name)
        return cls(model.to(chosen).eval(), processor, str(path), chosen)

    def _embed(self, image: np.ndarray):
        import torch

        inputs = self.processor(images=rgb(image), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            embedding = self.model.get_image_embeddings(inputs["pixel_values"])
        return embedding, inputs["original_sizes"], inputs["reshaped_input_sizes"]

    def _predict(self, image, embedding, boxes, points):
        import torch

        embeddings, original_sizes, reshaped_sizes = embedding
        prompts = {}
        if boxes is not None:
            prompts["input_boxes"] = [boxes.tolist()]
        if points is not None:
            prompts["input_points"] = [[[p] for p in points.tolist()]]
            prompts["input_labels"] = [[[1] for _ in points]]
        # The processor rescales prompts to SAM's input size; the image itself is already embedded.
        inputs = self.processor(images=rgb(image), return_tensors="pt", **prompts)
        inputs = {
            k: v.to(self.device) for k, v in inputs.items() if k in ("input_boxes", "input_points", "input_labels")
        }
        with torch.inference_mode():
            outputs = self.model(image_embeddings=embeddings, multimask_output=False, **inputs)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(), original_sizes.cpu(), reshaped_sizes.cpu()
        )[0]
        return masks[:, 0].numpy().astype(bool), outputs.iou_scores[0, :, 0].float().cpu().numpy()


class SegmentAnythingSegmenter(_Segmenter):
    """SAM through the original ``segment-anything`` package (``SamPredictor``)."""

    backend = "segment-anything"

    def __init__(self, predictor, weights: str, device_name: str):
        super().__init__(weights, device_name)
        self.predictor = predictor

    @classmethod
    def load(cls, weights: str | Path | None = None, device_name: str | None = None) -> SegmentAnythingSegmenter:
        from segment_anything import SamPredictor, sam_model_registry
        from segment_anything.build_sam import _build_sam

        path = resolve(weights, "segmenter:segment-anything")
        checkpoint = path if path.is_file() else next(iter(sorted(path.rglob("sam_vit_*.pth"))), None)
        if checkpoint is None:
            raise ModelStoreError(f"{path}: holds no sam_vit_{{b,l,h}}_*.pth checkpoint")
        chosen = device(device_name)
        architecture = checkpoint.parent / "sam_config.json"
        if architecture.is_file():  # a custom size: its _build_sam arguments beside the checkpoint
            model = _build_sam(**json.loads(architecture.read_text()), checkpoint=str(checkpoint))
        else:
            variant = "vit_" + checkpoint.name.split("_")[2]
            if variant not in sam_model_registry:
                raise ModelStoreError(
                    f"{checkpoint}: unknown SAM variant {variant!r} ({', '.join(sam_model_registry)})"
                )
            model = sam_model_registry[variant](checkpoint=str(checkpoint))
        model = model.to(chosen).eval()
        return cls(SamPredictor(model), str(checkpoint), chosen)

    def _embed(self, image: np.ndarray):
        self.predictor.set_image(rgb(image))
        return self.predictor.get_image_embedding()

    def _predict(self, image, embedding, boxes, points):
        import torch

        predictor = self.predictor  # holds the embedding of the last frame set, which ``_embedding`` keeps current
        size = image.shape[:2]
        box_tensor = point_tensor = label_tensor = None
        if boxes is not None:
            box_tensor = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), size)
        if points is not None:
            coords = predictor.transform.apply_coords_torch(
                torch.as_tensor(points[:, None, :], dtype=torch.float), size
            )
            point_tensor, label_tensor = coords, torch.ones(coords.shape[:2], dtype=torch.int)
        with torch.inference_mode():
            masks, scores, _ = predictor.predict_torch(
                point_coords=point_tensor, point_labels=label_tensor, boxes=box_tensor, multimask_output=False
            )
        return masks[:, 0].cpu().numpy().astype(bool), scores[:, 0].float().cpu().numpy()
