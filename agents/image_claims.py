"""Image findings as verified claims, as video events get them: where each region lies, how large it is, how
far beyond normal it peaks, and what the method saw there (few-shot patch features: the normal image holding
the nearest patch; the embedded detector: which descriptors deviate).

Claims are drafted from the inspector's regions (``tools.inspect.regions``: connected areas of the whole map)
and each is checked again another way: the region's peak and extent re-measured inside its box from the anomaly
map (the connected area that spans the box), its place from the box, and what the method saw re-read at the
re-measured peak. Sentences are rendered from supported claims only (``prompts/image_claims.yaml``), so nothing
unchecked reaches the report.
"""

from __future__ import annotations

import cv2
import numpy as np

from anomalens.agents.claims import number
from anomalens.prompts import load as load_prompts
from anomalens.report import ImageFinding
from anomalens.tools.inspect import Look
from anomalens.types import Claim, Evidence, Verdict

RELATIVE_TOLERANCE = 0.05  # a re-measured peak or extent may differ this much from the drafted one
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")


def place(box: np.ndarray, size: tuple[int, int]) -> str:
    """Where a box's centre lies in a 3x3 grid of the image (``size``: width, height), e.g. "top left"."""
    width, height = size
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row, column = ROWS[min(2, int(3 * y / height))], COLUMNS[min(2, int(3 * x / width))]
    return "centre" if (row, column) == ("middle", "centre") else f"{row} {column}"


def explained(finding: ImageFinding, look: Look | None = None) -> ImageFinding:
    """``finding`` with the claims about its regions, each verified, and the sentences of the supported ones."""
    checked = [
        claim.model_copy(update={"text": render(claim, finding),
                                 "verdict": verify(claim, finding.evidence, finding.threshold, look)})
        for claim in draft(finding.evidence, finding.threshold, finding.unit, look)
    ]  # fmt: skip
    sentences = [claim.text for claim in checked if claim.verdict.status == "supported"]
    return finding.model_copy(update={"claims": checked, "explanation": sentences})


def draft(evidence: Evidence, threshold: float, unit: str, look: Look | None = None) -> list[Claim]:
    """Claims about each region of ``evidence`` (its boxes, peaks and ``area`` measurements; regions are
    numbered from 1 by ``track_ids``), the peak in ``unit``; ``look`` adds what the method saw at the peak."""
    claims = []
    for i, region in enumerate(evidence.track_ids if evidence.track_ids is not None else []):
        region = int(region)
        cite = {"evidence_ids": [evidence.id], "track_id": region}
        claims += [
            Claim(id=f"r{region}-where", kind="spatial", zone=place(evidence.boxes[i], evidence.frame_size), **cite),
            Claim(id=f"r{region}-area", kind="measurement", quantity="area", unit="px",
                  value=evidence.measurement("area", i).value, **cite),
            Claim(id=f"r{region}-peak", kind="measurement", quantity="peak", unit=unit,
                  value=float(evidence.scores[i]), **cite),
        ]  # fmt: skip
        seen = look(*_peak(evidence, i, threshold)[0]) if look is not None else None
        if seen is not None:
            claims.append(Claim(id=f"r{region}-look", kind="other", quantity="look", term=seen, **cite))
    return claims


def verify(claim: Claim, evidence: Evidence, threshold: float, look: Look | None = None) -> Verdict:
    """``claim`` checked against ``evidence``'s anomaly map, re-measured inside the claimed region's box."""
    ids = [] if evidence.track_ids is None else [int(t) for t in evidence.track_ids]
    if claim.track_id not in ids:
        return Verdict(status="unsupported", reason=f"there is no region {claim.track_id}")
    i = ids.index(claim.track_id)
    (x, y), peak, extent = _peak(evidence, i, threshold)
    if claim.kind == "spatial":
        where = place(evidence.boxes[i], evidence.frame_size)
        return _verdict(claim.zone == where, f"its box's centre lies in the {where}")
    if claim.quantity == "peak":
        return _verdict(_close(claim.value, peak), f"the map peaks at {peak:.3g} inside its box, at ({x}, {y})")
    if claim.quantity == "area":
        return _verdict(_close(claim.value, extent), f"{extent} px around the peak reach {threshold:g}")
    if claim.quantity == "look" and look is not None:
        seen = look(x, y)
        return _verdict(claim.term == seen, f"at ({x}, {y}) the method reads: {seen or 'nothing'}")
    return Verdict(status="unverifiable", reason=f"no check for a {claim.kind} claim about {claim.quantity}")


def render(claim: Claim, finding: ImageFinding) -> str:
    """The sentence a claim about one of ``finding``'s regions states."""
    text = load_prompts("image_claims")
    return text[claim.quantity or claim.kind].format(
        region=claim.track_id, zone=claim.zone, value=number(claim.value), unit=claim.unit, term=claim.term,
        compared_with=finding.compared_with, threshold=finding.threshold,
    )


def _peak(evidence: Evidence, i: int, threshold: float) -> tuple[tuple[int, int], float, int]:
    """Region ``i`` re-measured inside its box: its strongest point, the map's value there, and its extent: the
    pixels reaching ``threshold`` in the connected area that spans the box (as the region's own area does), else
    in the one at the box's strongest point."""
    x1, y1, x2, y2 = (int(v) for v in evidence.boxes[i])
    inside = evidence.anomaly_map[y1:y2, x1:x2]
    count, labels, stats, _ = cv2.connectedComponentsWithStats((inside >= threshold).astype(np.uint8))
    spanning = [k for k in range(1, count) if (stats[k, 2], stats[k, 3]) == inside.shape[::-1]]
    own = spanning[0] if spanning else labels.flat[int(inside.argmax())]
    area = labels == own if own else np.ones(inside.shape, bool)
    row, column = np.unravel_index(int(np.where(area, inside, -np.inf).argmax()), inside.shape)
    return (x1 + int(column), y1 + int(row)), float(inside[row, column]), int(area.sum()) if own else 0


def _close(claimed: float | None, measured: float) -> bool:
    return claimed is not None and abs(claimed - measured) <= RELATIVE_TOLERANCE * max(abs(measured), 1.0)


def _verdict(holds: bool, reason: str) -> Verdict:
    return Verdict(status="supported" if holds else "unsupported", reason=reason)
