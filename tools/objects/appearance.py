"""How objects look: a crop embedding (ImageNet features) of an object when its track is due for a look, and its
nearest-neighbour distance to the normal objects of the scene (``Appearance``), 1.0 at the normal edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_CROP = 8  # analysis px: objects smaller than this on either side show too little to embed
CROP_MARGIN = 0.15  # crops include some surroundings: a box can cut off limbs and wheels
CROP_SIDE = 128  # the embedder's input for objects: surveillance objects are small, 128 px already upsamples
MAX_BANK = 3000  # normal objects kept for the nearest-neighbour search (a k-centre coreset of them)
EDGE_QUANTILE = 0.995  # the normal edge of appearance: this quantile of held-out normal objects' distances


@dataclass
class Appearance:
    """The look of a scene's normal objects: a bank of unit embeddings and the normal edge of the distance to it.

    An object's distance is 1 - the cosine similarity of its nearest normal neighbour; ``ratios`` divides by
    ``edge`` (the distance held-out normal objects reach at ``EDGE_QUANTILE``), so 1.0 is the edge of normal
    like every other cue."""

    bank: np.ndarray  # (M, D) float32, unit rows
    edge: float

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        if not len(vectors):
            return np.zeros(0)
        return 1.0 - (np.asarray(vectors, np.float32) @ self.bank.T).max(axis=1).astype(np.float64)

    def ratios(self, vectors: np.ndarray) -> np.ndarray:
        return self.distances(vectors) / self.edge

    @classmethod
    def fit(cls, folds: tuple[np.ndarray, np.ndarray]) -> Appearance:
        """From the embeddings of normal objects in two folds (different videos, or the halves of one): each fold
        is scored against the other's bank, which sets the edge; the bank holds both."""
        first, second = (np.asarray(fold, np.float32) for fold in folds)
        if min(len(first), len(second)) < 2:
            raise ValueError(f"only {len(first) + len(second)} objects were seen well enough to learn their look")
        held_out = np.concatenate([
            cls(coreset(first, MAX_BANK), 1.0).distances(second),
            cls(coreset(second, MAX_BANK), 1.0).distances(first),
        ])  # fmt: skip
        edge = max(float(np.quantile(held_out, EDGE_QUANTILE)), 1e-3)
        return cls(coreset(np.concatenate([first, second]), MAX_BANK), edge)

    def state(self) -> dict:
        return {"appearance_bank": self.bank, "appearance_edge": np.float64(self.edge)}

    @classmethod
    def from_state(cls, state: dict) -> Appearance | None:
        if "appearance_bank" not in state:
            return None
        return cls(np.asarray(state["appearance_bank"], np.float32), float(state["appearance_edge"]))


def coreset(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most ``size`` rows of ``vectors`` chosen greedily farthest-first (k-centre), so that rare looks survive
    the cut that a random sample would drop (PatchCore's coreset idea, without its random projection)."""
    if len(vectors) <= size:
        return vectors
    chosen = [int(np.random.default_rng(seed).integers(len(vectors)))]
    nearest = 1.0 - vectors @ vectors[chosen[0]]
    for _ in range(size - 1):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[pick])
    return vectors[np.sort(chosen)]
