"""What the foundation-model tools share: input checks and device choice.

Frames are ``(h, w, 3)`` uint8 BGR, as ``FrameSource`` yields them; the models want RGB.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from anomalens.errors import MediaError
from anomalens.types import Evidence, EvidenceKind, Source


def rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """A BGR frame as a contiguous RGB array; a clear error for anything else."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MediaError(name, f"expected an (h, w, 3) uint8 BGR frame, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[:, :, ::-1])


def frame_size(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


def device(requested: str | None = None) -> str:
    """``requested``, else the first CUDA GPU when there is one, else the CPU."""
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width, height = size
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0])
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1])
    return boxes


def letterbox(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``image`` scaled so its longer side is ``side`` (``INTER_AREA``), at the top-left of a black square canvas of
    that side; returns the canvas and the scale (canvas pixels per source pixel: divide to map back)."""
    import cv2

    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[: size[1], : size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return canvas, scale


def jpeg_data_url(image: np.ndarray, quality: int = 90) -> str:
    """A BGR frame as a ``data:image/jpeg;base64`` URL, for OpenAI-compatible vision messages."""
    import base64

    import cv2

    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MediaError("image", "could not be encoded as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


def detections(
    backend: str,
    weights: str,
    started: float,
    size: tuple[int, int],
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    frame_index: int | None = None,
) -> Evidence:
    """``DETECTION`` evidence from any detector: boxes (xyxy source pixels, clipped here), each box's class and
    confidence; ``started`` is when the detector began (``time.perf_counter()``)."""
    scores = np.asarray(scores, dtype=np.float64)
    return Evidence(
        kind=EvidenceKind.DETECTION,
        source=Source(
            tool="detect", backend=backend, weights=Path(weights).name, latency_s=time.perf_counter() - started
        ),
        frame_index=frame_index,
        frame_size=size,
        boxes=clip_boxes(boxes, size),
        scores=scores,
        labels=list(classes),
        class_names=list(classes),
        class_scores=scores,
    )
