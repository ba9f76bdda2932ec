"""How unusual each object is: a density over its attributes, learned from the normal footage's objects.

An object's attributes are its class and its speed for its size (body heights per second; in px/s where the
scene knows no perspective). Their density is the
product of the share of normal objects of its class (with one extra sighting of every class, so that a class
never seen is rare, not impossible) and a two-component Gaussian mixture of normal speeds. A mixture, not a kernel
density: on Ped2 a kernel density followed the few odd fast boxes of the normal footage and called test cyclists
at those speeds normal (frame AUROC 0.967 against 0.989). Only speed above the normal median counts as unusual:
standing still is never anomalous by itself (staying too long is the dwell rule's to say). The negative log of the density is the object's surprise; ``ratio`` puts it on the scale every
cue shares, 0 at the typical held-out normal object and 1.0 at the edge of normal (the ``EDGE_QUANTILE`` of normal
objects from footage the density was not fitted on). Reiss & Hoshen (TMLR 2023) score objects this way with their
velocity alone; the class is what a cyclist riding at walking pace has that its speed lacks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EDGE_QUANTILE = 0.999  # held-out normal objects beyond this are the edge of normal
VOCABULARY = 81  # classes an object may have: COCO's 80 and none (nothing named it)
GRID = 512  # points the speed's surprise is tabulated at
COMPONENTS = 2  # of the speeds' mixture: standing and walking, as Reiss & Hoshen fit Ped2's velocities
MIN_OBJECTS = 30  # normal objects needed to learn a density
NONE = ""  # how an object nothing named is counted


@dataclass(frozen=True)
class ObjectDensity:
    """Surprise of an object's class and speed for its size, learned from normal objects; see the module."""

    classes: dict[str, float]  # class (NONE: nothing named it) -> its sightings among the normal objects
    speeds: np.ndarray  # (GRID,) relative speeds, heights/s, at which ...
    surprise: np.ndarray  # (GRID,) ... the speed's surprise is tabulated (flat below the median)
    typical: float = 0.0  # the surprise of the typical held-out normal object
    edge: float = 1.0  # and of the edge of normal

    @classmethod
    def fit(cls, classes: Sequence[str | None], speeds: Sequence[float]) -> ObjectDensity:
        """From normal objects' classes and relative speeds, one pair per object sighting."""
        from sklearn.mixture import GaussianMixture

        speeds = np.asarray(speeds, float)
        if len(speeds) < MIN_OBJECTS:
            raise ValueError(f"only {len(speeds)} objects in the normal footage; need at least {MIN_OBJECTS}")
        mixture = GaussianMixture(COMPONENTS, random_state=0, reg_covar=1e-4).fit(speeds.reshape(-1, 1))
        median = float(np.median(speeds))
        grid = np.linspace(0.0, max(float(speeds.max()), median) * 3 + 1e-3, GRID)
        surprise = -mixture.score_samples(np.maximum(grid, median).reshape(-1, 1))
        counted = Counter(NONE if c is None else c for c in classes)
        return cls({k: float(v) for k, v in counted.items()}, grid, surprise)

    def surprises(self, classes: Sequence[str | None], speeds: Sequence[float]) -> np.ndarray:
        """The negative log density of each object (class and relative speed)."""
        speeds = np.asarray(speeds, float)
        total = sum(self.classes.values())
        seen = np.array([self.classes.get(NONE if c is None else c, 0.0) for c in classes])
        of_class = -np.log((seen + 1.0) / (total + VOCABULARY))
        inside = np.interp(speeds, self.speeds, self.surprise)
        slope = (self.surprise[-1] - self.surprise[-2]) / (self.speeds[-1] - self.speeds[-2])
        beyond = self.surprise[-1] + max(slope, 0.0) * (speeds - self.speeds[-1])  # past the grid: still rising
        return of_class + np.where(speeds > self.speeds[-1], beyond, inside)

    def ratios(self, classes: Sequence[str | None], speeds: Sequence[float]) -> np.ndarray:
        """Each object's surprise on the cues' scale: 0 typical, 1.0 at the edge of normal; never below 0."""
        return np.maximum((self.surprises(classes, speeds) - self.typical) / (self.edge - self.typical), 0.0)

    @classmethod
    def calibrated(cls, folds: tuple[tuple[list, list], tuple[list, list]]) -> ObjectDensity:
        """Fitted on both folds of normal objects (``(classes, speeds)`` each), its scale set by each fold scored
        by the density of the other."""
        (first_classes, first_speeds), (second_classes, second_speeds) = folds
        held_out = np.concatenate([
            cls.fit(first_classes, first_speeds).surprises(second_classes, second_speeds),
            cls.fit(second_classes, second_speeds).surprises(first_classes, first_speeds),
        ])  # fmt: skip
        typical, edge = float(np.median(held_out)), float(np.quantile(held_out, EDGE_QUANTILE))
        whole = cls.fit([*first_classes, *second_classes], [*first_speeds, *second_speeds])
        return cls(whole.classes, whole.speeds, whole.surprise, typical, max(edge, typical + 1e-3))

    def state(self) -> dict:
        names = sorted(self.classes)
        return {
            "density_classes": np.array(names), "density_counts": np.array([self.classes[n] for n in names]),
            "density_speeds": self.speeds, "density_surprise": self.surprise,
            "density_scale": np.array([self.typical, self.edge]),
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict) -> ObjectDensity | None:
        if "density_speeds" not in state:
            return None
        classes = {str(n): float(c) for n, c in zip(state["density_classes"], state["density_counts"])}
        typical, edge = (float(v) for v in state["density_scale"])
        return cls(classes, np.asarray(state["density_speeds"]), np.asarray(state["density_surprise"]), typical, edge)
