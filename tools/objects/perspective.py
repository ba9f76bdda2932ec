"""How tall a person stands at each height of the view: near the camera people are tall, far away small.

Fitted on the people of normal footage (a straight line through the median height of each band of foot heights,
so that a few odd boxes do not bend it); it turns speeds into body heights per second, sets how small a moving
thing may be where it stands, and the resolution optical flow needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PEOPLE = 30  # people needed to fit the line
BANDS = 10  # bands of foot height whose median heights the line goes through
FLOW_PERSON_PX = 32  # optical flow needs a person at least this tall (on Ped2, flow at half the size cost 0.02 AUROC)


@dataclass(frozen=True)
class Perspective:
    """A person's height (analysis px) = ``slope * y + intercept`` at foot height ``y``, at least ``floor``."""

    slope: float
    intercept: float
    floor: float  # the smallest person seen: the line is not trusted below it
    typical: float  # the median person's height

    def height(self, y: float) -> float:
        return max(self.slope * y + self.intercept, self.floor)

    @classmethod
    def fit(cls, feet_y: np.ndarray, heights: np.ndarray) -> Perspective | None:
        """From people's foot heights and heights (analysis px); None with fewer than ``MIN_PEOPLE``."""
        feet_y, heights = np.asarray(feet_y, float), np.asarray(heights, float)
        if len(heights) < MIN_PEOPLE:
            return None
        edges = np.unique(np.quantile(feet_y, np.linspace(0, 1, BANDS + 1)))
        band = np.clip(np.searchsorted(edges, feet_y, side="right") - 1, 0, len(edges) - 2)
        points = np.array([(np.median(feet_y[band == b]), np.median(heights[band == b]))
                           for b in range(len(edges) - 1) if (band == b).sum() >= 3])  # fmt: skip
        if len(points) >= 2:
            slope, intercept = np.polyfit(points[:, 0], points[:, 1], 1)
            slope = max(float(slope), 0.0)  # people never shrink as they come nearer
        else:
            slope, intercept = 0.0, float(np.median(heights))
        return cls(float(slope), float(intercept), float(np.quantile(heights, 0.05)), float(np.median(heights)))

    def flow_scale(self) -> float:
        """The share of the analysis resolution at which the typical person is still ``FLOW_PERSON_PX`` tall."""
        return float(np.clip(FLOW_PERSON_PX / max(self.typical, 1.0), 0.25, 1.0))

    def state(self) -> dict:
        return {"perspective": np.array([self.slope, self.intercept, self.floor, self.typical])}

    @classmethod
    def from_state(cls, state: dict) -> Perspective | None:
        if "perspective" not in state:
            return None
        return cls(*(float(v) for v in state["perspective"]))
