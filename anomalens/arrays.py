"""Pydantic field types for numpy arrays, with compact JSON encodings.

- ``FloatArray`` / ``IntArray``: plain JSON lists (small per-object arrays such as boxes and scores).
- ``MaskArray``: boolean stack ``(N, H, W)`` stored as run-length encoding, column-major like COCO's
  uncompressed RLE, so frame-sized masks stay small in reports.
- ``MapArray``: dense float map ``(H, W)`` stored as base64 float16 with its shape.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, PlainSerializer


def _as_float(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _as_int(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def encode_masks(masks: np.ndarray) -> dict:
    """``(N, H, W)`` bool -> ``{"shape": [N, H, W], "counts": [[...], ...]}`` (runs start with zeros)."""
    masks = np.asarray(masks, dtype=bool)
    counts = []
    for mask in masks:
        flat = mask.ravel(order="F").astype(np.int8)
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(bounds).tolist()
        if flat.size and flat[0]:
            runs = [0, *runs]
        counts.append(runs)
    return {"shape": list(masks.shape), "counts": counts}


def decode_masks(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(bool, copy=False)
    if isinstance(value, dict):
        n, h, w = value["shape"]
        masks = np.zeros((n, h * w), dtype=bool)
        for i, runs in enumerate(value["counts"]):
            ends = np.cumsum(runs)
            for start, end in zip(ends[0::2], ends[1::2]):
                masks[i, start:end] = True
        return masks.reshape(n, w, h).transpose(0, 2, 1)
    return np.asarray(value, dtype=bool)


def encode_map(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array, dtype=np.float16)
    return {"shape": list(array.shape), "dtype": "float16", "b64": base64.b64encode(array.tobytes()).decode()}


def decode_map(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        raw = np.frombuffer(base64.b64decode(value["b64"]), dtype=value.get("dtype", "float16"))
        return raw.reshape(value["shape"]).astype(np.float32)
    return np.asarray(value, dtype=np.float32)


FloatArray = Annotated[
    np.ndarray, BeforeValidator(_as_float), PlainSerializer(lambda a: a.tolist(), when_used="json")
]
IntArray = Annotated[
    np.ndarray, BeforeValidator(_as_int), PlainSerializer(lambda a: a.tolist(), when_used="json")
]
MaskArray = Annotated[np.ndarray, BeforeValidator(decode_masks), PlainSerializer(encode_masks, when_used="json")]
MapArray = Annotated[np.ndarray, BeforeValidator(decode_map), PlainSerializer(encode_map, when_used="json")]
