"""Box geometry on ``(N, 4)`` xyxy arrays."""

from __future__ import annotations

import numpy as np


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)``: the area every xyxy box in ``a`` (N, 4) shares with every box in ``b`` (M, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` (N, 4) with every box in ``b`` (M, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter = box_intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def grown(boxes: np.ndarray, margin: float, size: tuple[int, int], minimum: float = 0.0) -> np.ndarray:
    """``boxes`` grown by ``margin`` of their size on each side and to at least ``minimum`` wide and tall, moved
    into the frame where they stick out (so a box at the edge keeps its size), then cut to the frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = np.maximum((boxes[:, 2:] - boxes[:, :2]) * (0.5 + margin), minimum / 2)
    low, high = centre - half, centre + half
    limit = np.array(size, dtype=np.float64)
    shift = np.clip(-low, 0, None) - np.clip(high - limit, 0, None)
    low, high = np.clip(low + shift, 0, limit), np.clip(high + shift, 0, limit)
    return np.concatenate([low, high], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first: a box is dropped when it
    overlaps a kept one by more than ``iou``; with ``classes``, only boxes of the same class suppress each other."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if classes is not None and len(boxes):  # boxes of different classes moved apart so that they never overlap
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * (boxes.max() + 1.0))[:, None]
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    while len(order):
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = order[box_iou(boxes[best : best + 1], boxes[order])[0] <= iou]
    return np.array(keep, dtype=int)
