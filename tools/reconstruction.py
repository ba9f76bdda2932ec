"""Reconstruction detector on motion patches, trained only on a scene's normal footage.

The frame is cut into square cells; each cell's optical flow, averaged down to ``patch x patch`` vectors
(``2 * patch**2`` numbers), is projected on the principal components of moving cells in normal footage. What
the components cannot reconstruct (the residual norm) is unusual motion *pattern* (a rigid glide, a swerve,
a fast wheel) rather than only unusual speed. Each cell's residual is divided by that cell's 99.9th
percentile on normal footage (see ``tools.motion.pooled_reference`` for quiet cells), so 1.0 is the edge of
normal everywhere in the view.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anomalens.errors import AnomalensError
from anomalens.tools.motion import pooled_reference

MOVING = 0.05  # px/frame: cells slower than this on average are not motion patches
MAX_FIT_PATCHES = 60_000  # PCA is fitted on at most this many moving patches (evenly subsampled)


class FlowPatchPCA:
    """``fit(flows)`` on normal footage, then ``score(flow)`` -> ``(rows, cols)`` residual ratios.

    Args:
        cell: cell side in analysis pixels (the grid covers the frame's top-left ``rows*cell x cols*cell``).
        patch: each cell's flow is averaged to ``patch x patch`` vectors.
        components: principal components kept.
    """

    def __init__(self, cell: int = 24, patch: int = 4, components: int = 16):
        self.cell, self.patch, self.components = cell, patch, components
        self.mean: np.ndarray | None = None

    def features(self, flow: np.ndarray) -> np.ndarray:
        """``(h, w, 2)`` flow -> ``(rows, cols, 2 * patch**2)`` patch vectors."""
        rows, cols = flow.shape[0] // self.cell, flow.shape[1] // self.cell
        if rows == 0 or cols == 0:
            raise AnomalensError(f"frame {flow.shape[1]}x{flow.shape[0]} is smaller than one {self.cell}px cell")
        p = self.patch
        small = cv2.resize(
            np.ascontiguousarray(flow[: rows * self.cell, : cols * self.cell]), (cols * p, rows * p),
            interpolation=cv2.INTER_AREA,
        )
        return small.reshape(rows, p, cols, p, 2).transpose(0, 2, 1, 3, 4).reshape(rows, cols, 2 * p * p)

    def _residual(self, features: np.ndarray) -> np.ndarray:
        centred = features - self.mean
        projected = centred @ self.basis.T @ self.basis
        return np.linalg.norm(centred - projected, axis=-1)

    def fit(self, features: Sequence[np.ndarray], walkable: np.ndarray | None = None) -> FlowPatchPCA:
        """Fit on per-frame patch vectors ``(rows, cols, d)`` from normal footage (frames with motion).

        ``walkable`` (rows, cols) marks quiet cells that borrow the busy cells' level (``pooled_reference``)."""
        if not features:
            raise AnomalensError("no motion in the normal footage: the reconstruction detector has nothing to learn")
        stack = np.stack(features).astype(np.float32)  # (T, rows, cols, d)
        flat = stack.reshape(-1, stack.shape[-1])
        moving = flat[np.abs(flat).mean(axis=1) > MOVING]
        if len(moving) < 2 * self.components:
            raise AnomalensError(f"only {len(moving)} moving patches in the normal footage; need {2 * self.components}")
        moving = moving[:: max(1, len(moving) // MAX_FIT_PATCHES)]
        self.mean = moving.mean(axis=0)
        _, _, vt = np.linalg.svd(moving - self.mean, full_matrices=False)
        self.basis = vt[: self.components]
        self.reference = pooled_reference(self._residual(stack), walkable, active=MOVING) + MOVING
        return self

    def score(self, flow: np.ndarray) -> np.ndarray:
        """Residual of each cell divided by its normal 99.9th percentile: ``(rows, cols)``."""
        if self.mean is None:
            raise AnomalensError("the reconstruction detector is not fitted")
        return (self._residual(self.features(flow)) / self.reference).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {
            "recon_shape": np.array([self.cell, self.patch, self.components]),
            "recon_mean": self.mean,
            "recon_basis": self.basis,
            "recon_reference": self.reference,
        }

    @classmethod
    def from_state(cls, state: dict) -> FlowPatchPCA:
        cell, patch, components = (int(v) for v in state["recon_shape"])
        model = cls(cell, patch, components)
        model.mean = np.asarray(state["recon_mean"], dtype=np.float32)
        model.basis = np.asarray(state["recon_basis"], dtype=np.float32)
        model.reference = np.asarray(state["recon_reference"], dtype=np.float32)
        return model
