"""Image inspection on the magnetic-tile defect images (``../shared/data/magnetic_tile``).

Layout: ``<class>/<name>.jpg`` with ``<name>_mask.png`` (255 = defect); ``Free`` holds defect-free tiles. The
first ``shots`` Free images (natural order) are the few-shot normal references and are left out of the test
set; everything else is tested, so zero-shot and few-shot runs score the same images.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from anomalens.errors import AnomalensError
from anomalens.eval.metrics import roc_auc
from anomalens.pipelines.explain import inspect_images
from anomalens.tools.inspect import read_image
from anomalens.tools.perception import Perception
from anomalens.video import natural_key

NORMAL_CLASS = "Free"
PIXEL_STRIDE = 2  # pixel AUROC on every 2nd row and column: ~13M pixels instead of ~52M, the same curve


def load_tiles(data: str | Path) -> dict[str, list[Path]]:
    data = Path(data)
    classes = {
        folder.name: sorted(folder.glob("*.jpg"), key=natural_key)
        for folder in sorted(data.iterdir())
        if folder.is_dir()
    }
    if NORMAL_CLASS not in classes or len(classes) < 2:
        raise AnomalensError(f"{data}: expected a {NORMAL_CLASS}/ folder and defect class folders of *.jpg")
    return classes


def _mask(image_path: Path, shape: tuple[int, int]) -> np.ndarray:
    mask = cv2.imread(str(image_path.with_name(image_path.stem + "_mask.png")), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise AnomalensError(f"{image_path}: its mask {image_path.stem}_mask.png is missing or unreadable")
    if mask.shape != shape:
        raise AnomalensError(f"{image_path}: mask is {mask.shape}, image is {shape}")
    return mask > 127


def run_magnetic_tile(
    data: str | Path,
    shots: int = 0,
    perception: Perception | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Image AUROC (per defect class too) and pixel AUROC of the available method, zero- or few-shot; ``limit``
    keeps the first images of each class (after the normal references), for a quick look."""
    started = time.perf_counter()
    classes = load_tiles(data)
    normal = classes[NORMAL_CLASS][:shots]
    tests = [(name, path) for name, paths in classes.items() for path in [p for p in paths if p not in normal][:limit]]
    report = inspect_images([path for _, path in tests], normal, perception, progress=progress)
    labels, scores, pixel_labels, pixel_scores, names = [], [], [], [], []
    for (name, path), finding in zip(tests, report.findings):
        shape = read_image(path).shape[:2]
        labels.append(name != NORMAL_CLASS)
        scores.append(finding.score)
        names.append(name)
        anomaly_map = finding.evidence.anomaly_map
        if anomaly_map.shape != shape:
            anomaly_map = cv2.resize(anomaly_map, shape[::-1], interpolation=cv2.INTER_LINEAR)
        pixel_scores.append(anomaly_map[::PIXEL_STRIDE, ::PIXEL_STRIDE].ravel())
        pixel_labels.append(_mask(path, shape)[::PIXEL_STRIDE, ::PIXEL_STRIDE].ravel())
    labels, scores, names = np.array(labels), np.array(scores), np.array(names)
    called = np.array([finding.anomalous for finding in report.findings])
    normal_rows = names == NORMAL_CLASS
    per_class = {
        name: roc_auc(
            np.concatenate([labels[normal_rows], labels[names == name]]),
            np.concatenate([scores[normal_rows], scores[names == name]]),
        )
        for name in classes
        if name != NORMAL_CLASS
    }
    return {
        "method": report.method,
        "mode": report.mode,
        "shots": shots,
        "image_auroc": roc_auc(labels, scores),
        "image_auroc_per_class": per_class,
        "pixel_auroc": roc_auc(np.concatenate(pixel_labels), np.concatenate(pixel_scores)),
        # The product's own decision (score at or above the method's threshold), on normal and defective tiles.
        "called_anomalous_normal": float(np.mean(called[~labels])),
        "called_anomalous_defective": float(np.mean(called[labels])),
        "claims": sum(len(f.claims) for f in report.findings),
        "claims_supported": _supported_share(report.findings),
        "images": int(len(labels)),
        "anomalous_images": int(labels.sum()),
        "seconds": time.perf_counter() - started,
        "seconds_per_image": (time.perf_counter() - started) / len(labels),
    }


def _supported_share(findings) -> float | None:
    """The share of the findings' claims that re-measurement supports."""
    verdicts = [claim.verdict.status for finding in findings for claim in finding.claims]
    return sum(v == "supported" for v in verdicts) / len(verdicts) if verdicts else None
