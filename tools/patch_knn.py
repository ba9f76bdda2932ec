"""Image inspection with pretrained patch features: PatchCore-style nearest neighbours (Roth et al., CVPR 2022).

Each image becomes a grid of locally aware CNN patch features (``Embedder.patch_features``); a patch's
novelty is its distance to the nearest normal patch:

- **few-shot** (``PatchKNN.fit``): the normal patches are those of a few normal images (a memory bank), and
  every patch remembers which normal image it came from, so a finding can name its nearest normal shot;
- **batched zero-shot** (``mutual_scores``): with no normal image, each image is scored against the other
  images of the batch (MuSc's mutual scoring, Li et al., ICLR 2024): a patch's novelty is the mean of its
  ``MUTUAL_SHARE`` smallest distances to the other images, so a defect that a few other images share is still
  novel while the surface, which every image shows, is not.

Maps are at image resolution, smoothed as PatchCore does: few-shot in units of the normal images' extreme.
Images inspected together are put in units of their threshold by ``relative_to_batch``: where a score stands
out from the batch's (most images of a batch are normal), and few-shot never below the normal extreme, since a
few normal images rarely show all of the normal variation (the magnetic tiles' shots show one lighting of six).
The 30% is MuSc's; ``MUTUAL_IMAGES`` bounds the cost (MuSc compares every pair). Nothing here was tuned on a
test label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anomalens.events import outlier_level
from anomalens.progress import track
from anomalens.tools.embedder import PATCH_STRIDE
from anomalens.tools.patch_novelty import cell_at, nearest, self_novelty, to_image
from anomalens.tools.protocols import Embedder

MUTUAL_IMAGES = 8  # other images each image is scored against in a batch (a seeded sample when there are more)
MUTUAL_SHARE = 0.3  # MuSc: a patch's novelty is the mean of its smallest 30% distances to the other images
MIN_BATCH = 3  # images a batch needs before its images can vouch for each other
# An image stands out from its batch beyond the median score plus 2 robust standard deviations: about 2% of
# normal images when their scores spread normally. Fixed beforehand; checked on the Crack class (1% of normal
# tiles called anomalous zero-shot, none with 1 or 4 shots).
BATCH_SPREAD = 2.0


@dataclass
class PatchMap:
    anomaly_map: np.ndarray  # (h, w) at the image's resolution
    score: float  # the map's maximum
    owners: np.ndarray | None = None  # few-shot: (rows, cols), which normal image holds each patch's nearest

    def nearest_normal(self, x: int, y: int) -> int | None:
        """Few-shot: the normal image holding the patch nearest to the one at image pixel ``(x, y)``."""
        if self.owners is None:
            return None
        return int(self.owners[cell_at(x, y, self.anomaly_map.shape, self.owners.shape)])


class PatchKNN:
    """Few-shot inspection: a memory bank of the normal images' patch features."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.bank = np.zeros((0, 1), np.float32)
        self.owner = np.zeros(0, np.int64)  # the normal image each bank row came from
        self.reference = 1.0

    def fit(self, normal: Sequence[np.ndarray]) -> PatchKNN:
        """Remember the patches of ``normal`` images. The normal extreme is the largest smoothed novelty of each
        normal image against the others and its own patches away from each patch (its own alone when it is the
        only one)."""
        if not normal:
            raise ValueError("few-shot needs at least one normal image")
        grids = [self.embedder.patch_features(image) for image in normal]
        flats = [grid.reshape(-1, grid.shape[-1]) for grid in grids]
        extremes = []
        for k, (image, grid) in enumerate(zip(normal, grids)):
            others = np.concatenate(flats[:k] + flats[k + 1 :]) if len(flats) > 1 else flats[k][:0]
            own = self_novelty(grid, k=1).ravel()
            held_out = np.minimum(own, nearest(flats[k], others)[0]) if len(others) else own
            extremes.append(float(to_image(held_out.reshape(grid.shape[:2]), image.shape[:2], PATCH_STRIDE).max()))
        self.reference = max(max(extremes), 1e-6)
        self.bank = np.concatenate(flats)
        self.owner = np.concatenate([np.full(len(flat), k) for k, flat in enumerate(flats)])
        return self

    def score(self, image: np.ndarray) -> PatchMap:
        grid = self.embedder.patch_features(image)
        distances, rows = nearest(grid.reshape(-1, grid.shape[-1]), self.bank)
        anomaly_map = to_image(distances.reshape(grid.shape[:2]) / self.reference, image.shape[:2], PATCH_STRIDE)
        return PatchMap(anomaly_map, float(anomaly_map.max()), self.owner[rows].reshape(grid.shape[:2]))


def relative_to_batch(maps: Sequence[PatchMap], floor: float) -> tuple[list[PatchMap], float]:
    """The ``maps`` of images inspected together, in units of their threshold: the larger of ``floor`` and where a
    score stands out from the batch's (``events.outlier_level``); and that threshold in the maps' units."""
    level = max(floor, outlier_level(np.array([m.score for m in maps]), BATCH_SPREAD), 1e-6)
    return [PatchMap(m.anomaly_map / level, m.score / level, m.owners) for m in maps], level


def mutual_scores(embedder: Embedder, images: Sequence[np.ndarray], progress: bool = True) -> list[PatchMap]:
    """Batched zero-shot: each image's patches against up to ``MUTUAL_IMAGES`` other images of the batch (at
    least ``MIN_BATCH`` images); maps in feature distance, for ``relative_to_batch``."""
    if len(images) < MIN_BATCH:
        raise ValueError(f"mutual scoring needs at least {MIN_BATCH} images, got {len(images)}")
    grids = [embedder.patch_features(image) for image in track(images, "patch features", enabled=progress)]
    flats = [grid.reshape(-1, grid.shape[-1]) for grid in grids]
    rng = np.random.default_rng(0)
    maps = []
    for k in track(range(len(images)), "scoring each image against the others", enabled=progress):
        others = [j for j in range(len(images)) if j != k]
        if len(others) > MUTUAL_IMAGES:
            others = rng.choice(others, MUTUAL_IMAGES, replace=False)
        distances = np.sort(np.stack([nearest(flats[k], flats[j])[0] for j in others], axis=1), axis=1)
        novelty = distances[:, : max(1, round(MUTUAL_SHARE * len(others)))].mean(axis=1)
        anomaly_map = to_image(novelty.reshape(grids[k].shape[:2]), images[k].shape[:2], PATCH_STRIDE)
        maps.append(PatchMap(anomaly_map, float(anomaly_map.max())))
    return maps
