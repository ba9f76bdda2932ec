"""The embedded image detector: patch novelty from hand-made texture descriptors, no pretrained weights.

Each image is cut into ``CELL``-pixel cells described by robustly normalised intensity, blur, gradient,
blob (Laplacian-of-Gaussian) and local-contrast statistics, each cell with its 3x3 neighbourhood's mean
(PatchCore's locally aware patches, Roth et al. CVPR 2022, with hand-made features in place of a CNN's).
A cell's novelty is its distance to the nearest normal cell:

- **few-shot**: the normal cells are those of a few normal images (a memory bank);
- **zero-shot** (self-referenced): the normal cells are the image's own, away from the cell itself: a cell is
  novel when fewer than ``SELF_NEIGHBOURS`` cells elsewhere in the image look like it (a defect is rare within
  its image; the surface is not).

Maps are in units of the normal extreme (1.0 = the most novel normal cells), smoothed, at image resolution.
Every constant here was fixed before the first measurement on any dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anomalens.errors import MediaError
from anomalens.events import outlier_level

CELL = 4  # px: a blowhole on a magnetic tile is about 11 px across
MAX_SIDE = 512  # px: larger images are analysed downscaled
SMOOTHING_SIGMA = 4.0  # px, PatchCore's
NORMAL_QUANTILE = 0.99  # the normal extreme, read from normal cells' own novelty
SELF_NEIGHBOURS = 0.02  # zero-shot: a cell is normal when 2% of the image's cells look like it
SELF_EXCLUSION = 2  # cells: a cell's immediate neighbours do not vouch for it
CHUNK = 2048


def _gray(image: np.ndarray, name: str) -> np.ndarray:
    if image.ndim not in (2, 3) or image.dtype != np.uint8 or min(image.shape[:2]) < 4 * CELL:
        raise MediaError(name, f"expected a uint8 image of at least {4 * CELL}x{4 * CELL} px, got {image.shape}")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    scale = min(1.0, MAX_SIDE / max(gray.shape))
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32)


def descriptors(image: np.ndarray, name: str = "image") -> np.ndarray:
    """(rows, cols, 16) cell descriptors of one image (BGR or grey uint8)."""
    gray = _gray(image, name)
    median = np.median(gray)
    spread = 1.4826 * np.median(np.abs(gray - median)) + 1.0  # brightness and contrast normalised per image
    g = (gray - median) / spread
    smooth = cv2.GaussianBlur(g, (0, 0), 1.0)
    blur = cv2.GaussianBlur(g, (0, 0), 3.0)
    gx, gy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    gradient = np.sqrt(gx**2 + gy**2)
    blob_small = cv2.Laplacian(cv2.GaussianBlur(g, (0, 0), 2.0), cv2.CV_32F) * 4.0
    blob_large = cv2.Laplacian(cv2.GaussianBlur(g, (0, 0), 4.0), cv2.CV_32F) * 16.0
    contrast = np.sqrt(np.maximum(cv2.blur(smooth**2, (5, 5)) - cv2.blur(smooth, (5, 5)) ** 2, 0))
    rows, cols = g.shape[0] // CELL, g.shape[1] // CELL

    def cells(channel: np.ndarray, reduce) -> np.ndarray:
        blocks = channel[: rows * CELL, : cols * CELL].reshape(rows, CELL, cols, CELL)
        return reduce(blocks, axis=(1, 3))

    local = np.stack(
        [
            cells(smooth, np.mean),
            cells(smooth, np.min),
            cells(blur, np.mean),
            cells(gradient, np.mean),
            cells(gradient, np.max),
            cells(blob_small, np.max),
            cells(blob_large, np.max),
            cells(contrast, np.mean),
        ],
        axis=-1,
    )
    context = cv2.blur(local, (3, 3), borderType=cv2.BORDER_REFLECT)
    return np.concatenate([local, context], axis=-1).astype(np.float32)


def nearest(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query row to its nearest bank row, and that row's index."""
    bank_sq = (bank**2).sum(1)
    distances = np.empty(len(queries), np.float32)
    indices = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), CHUNK):
        q = queries[start : start + CHUNK]
        d2 = (q**2).sum(1)[:, None] + bank_sq[None] - 2 * q @ bank.T
        indices[start : start + CHUNK] = closest = d2.argmin(axis=1)
        distances[start : start + CHUNK] = np.sqrt(np.maximum(d2[np.arange(len(q)), closest], 0))
    return distances, indices


def self_novelty(cells: np.ndarray, k: int | None = None) -> np.ndarray:
    """Each cell's distance to its ``k``-th most similar cell (default: the ``SELF_NEIGHBOURS`` share of the
    image's cells) outside its own ``SELF_EXCLUSION`` neighbourhood."""
    rows, cols, dims = cells.shape
    flat = cells.reshape(-1, dims)
    k = k or max(1, round(SELF_NEIGHBOURS * len(flat)))
    r, c = np.divmod(np.arange(len(flat)), cols)
    out = np.empty(len(flat), np.float32)
    sq = (flat**2).sum(1)
    for start in range(0, len(flat), CHUNK):
        stop = min(start + CHUNK, len(flat))
        d2 = sq[start:stop, None] + sq[None] - 2 * flat[start:stop] @ flat.T
        near = (np.abs(r[start:stop, None] - r[None]) <= SELF_EXCLUSION) & (
            np.abs(c[start:stop, None] - c[None]) <= SELF_EXCLUSION
        )
        d2[near] = np.inf
        out[start:stop] = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0))
    return out.reshape(rows, cols)


def to_image(cell_map: np.ndarray, shape: tuple[int, int], cell: int = CELL) -> np.ndarray:
    """A map of ``cell``-pixel cells (of the image as analysed) at the image's resolution ``(h, w)``, smoothed by
    ``SMOOTHING_SIGMA`` analysis pixels."""
    height, width = shape
    full = cv2.resize(cell_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    sigma = SMOOTHING_SIGMA * max(height, width) / max(cell_map.shape[0] * cell, cell_map.shape[1] * cell)
    return cv2.GaussianBlur(full, (0, 0), sigma)


def cell_at(x: int, y: int, image_shape: tuple[int, int], grid_shape: tuple[int, int]) -> tuple[int, int]:
    """The (row, column) of the ``grid_shape`` cell map that image pixel ``(x, y)`` falls in, the inverse of
    ``to_image`` for an image of ``image_shape`` ``(h, w)``."""
    (height, width), (rows, cols) = image_shape, grid_shape
    return min(rows - 1, y * rows // height), min(cols - 1, x * cols // width)


@dataclass
class NoveltyMap:
    anomaly_map: np.ndarray  # (h, w) at the image's resolution, 1.0 = the normal extreme
    score: float  # the map's maximum
    cells: np.ndarray  # (rows, cols, 16) standardised descriptors of the image's cells

    def deviations(self, x: int, y: int) -> dict[str, float]:
        """Descriptor name -> standardised deviation of the cell at image pixel ``(x, y)``."""
        cell = self.cells[cell_at(x, y, self.anomaly_map.shape, self.cells.shape[:2])]
        return {name: float(cell[k]) for k, name in enumerate(DESCRIPTOR_NAMES)}


DESCRIPTOR_NAMES = (
    "brightness", "darkest point", "broad brightness", "edges", "strongest edge", "small blobs", "large blobs",
    "local contrast",
)  # fmt: skip


class PatchNovelty:
    """Few-shot when fitted on normal images, zero-shot (self-referenced) otherwise."""

    def __init__(self) -> None:
        self.bank: np.ndarray | None = None
        self.centre = self.scale = None
        self.reference = 1.0

    @property
    def few_shot(self) -> bool:
        return self.bank is not None

    def fit(self, normal: Sequence[np.ndarray], names: Sequence[str] | None = None) -> PatchNovelty:
        """Remember the cells of ``normal`` images; the normal extreme is read from each normal image's cells
        against the others (against itself, zero-shot style, when there is only one)."""
        if not normal:
            raise ValueError("few-shot needs at least one normal image")
        names = names or [f"normal image {k}" for k in range(len(normal))]
        grids = [descriptors(image, name) for image, name in zip(normal, names)]
        stacked = np.concatenate([grid.reshape(-1, grid.shape[-1]) for grid in grids])
        self.centre = np.median(stacked, axis=0)
        self.scale = 1.4826 * np.median(np.abs(stacked - self.centre), axis=0) + 1e-3
        grids = [(grid - self.centre) / self.scale for grid in grids]
        flats = [grid.reshape(-1, grid.shape[-1]) for grid in grids]
        if len(flats) > 1:
            held_out = [nearest(cells, np.concatenate(flats[:k] + flats[k + 1 :]))[0] for k, cells in enumerate(flats)]
        else:
            held_out = [self_novelty(grids[0]).ravel()]
        self.reference = float(np.quantile(np.concatenate(held_out), NORMAL_QUANTILE)) or 1.0
        self.bank = np.concatenate(flats)
        return self

    def score(self, image: np.ndarray, name: str = "image") -> NoveltyMap:
        cells = descriptors(image, name)
        rows, cols, dims = cells.shape
        if self.few_shot:
            standardized = (cells - self.centre) / self.scale
            novelty = nearest(standardized.reshape(-1, dims), self.bank)[0].reshape(rows, cols) / self.reference
        else:
            flat = cells.reshape(-1, dims)
            centre = np.median(flat, axis=0)
            standardized = (cells - centre) / (1.4826 * np.median(np.abs(flat - centre), axis=0) + 1e-3)
            raw = self_novelty(standardized)
            novelty = raw / (outlier_level(raw) + 1e-6)  # the normal extreme: outliers from the image's own cells
        anomaly_map = to_image(novelty, image.shape[:2])
        return NoveltyMap(anomaly_map, float(anomaly_map.max()), standardized)
