"""Evaluation metrics as pure functions over numpy arrays."""

from __future__ import annotations

import numpy as np

from anomalens.geometry import box_iou


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    ``labels`` are 0/1 (1 = anomalous), ``scores`` larger = more anomalous. Raises if only one class occurs.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both normal and anomalous samples")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank within each run of equal scores (vectorised: pixel-level AUROC has millions of runs).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum (scikit-learn's ``average_precision_score``)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not labels.any():
        raise ValueError("AUPR needs at least one anomalous sample")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_labels)[last_of_tie]
    predicted = last_of_tie + 1
    precision = true_pos / predicted
    recall = true_pos / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best F1 over all thresholds and the threshold that reaches it (predict anomalous if >= t)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_labels)[last_of_tie]
    predicted = last_of_tie + 1
    f1 = 2 * true_pos / (predicted + labels.sum())
    best = int(np.argmax(f1))
    return float(f1[best]), float(sorted_scores[last_of_tie[best]])


def macro_auc(per_video: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, dict[str, float]]:
    """Mean AUROC over videos that hold both classes, and each video's AUROC (others are skipped)."""
    aucs = {
        name: roc_auc(labels, scores)
        for name, (labels, scores) in per_video.items()
        if 0 < np.sum(labels) < len(labels)
    }
    return (float(np.mean(list(aucs.values()))) if aucs else float("nan")), aucs


def per_video_normalised_auc(per_video: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """AUROC over all frames after min-max normalising each video's scores: the literature's usual protocol,
    which hides how scores compare across videos (a product cannot normalise by the video's own range)."""
    labels = np.concatenate([labels for labels, _ in per_video.values()])
    scaled = [(s - s.min()) / max(float(s.max() - s.min()), 1e-12) for _, s in per_video.values()]
    return roc_auc(labels, np.concatenate(scaled))


def rbdc_tbdc(
    detections: list[tuple[np.ndarray, np.ndarray]],
    truth: list[tuple[np.ndarray, np.ndarray]],
    *,
    iou: float = 0.1,
    track_fraction: float = 0.1,
    max_fpr: float = 1.0,
) -> tuple[float, float]:
    """Region- and track-based detection criteria (Ramachandra & Jones, WACV 2020).

    ``detections[t] = (boxes (N, 4), scores (N,))`` and ``truth[t] = (boxes (M, 4), track ids (M,))`` per
    frame. At each score threshold a true region counts as detected when a detection above the threshold
    overlaps it with IoU >= ``iou``; a detection that overlaps no true region is a false positive. A true track
    counts as detected when at least ``track_fraction`` of its regions are. RBDC and TBDC are the areas under
    the region and track detection rates plotted against false positives per frame, for 0..``max_fpr``,
    divided by ``max_fpr``.
    """
    if len(detections) != len(truth):
        raise ValueError(f"{len(detections)} frames of detections but {len(truth)} of truth")
    frames = len(truth)
    # Per detection: frame-independent facts needed at any threshold.
    det_scores, det_false, det_hits = [], [], []  # hits: (region index) ids each detection detects
    region_track, region_offset = [], 0
    for (boxes, scores), (gt_boxes, gt_tracks) in zip(detections, truth):
        overlap = box_iou(boxes, gt_boxes) >= iou
        for k, score in enumerate(np.asarray(scores, dtype=np.float64).reshape(-1)):
            det_scores.append(score)
            det_false.append(not overlap[k].any())
            det_hits.append(region_offset + np.flatnonzero(overlap[k]))
        region_track.extend(np.asarray(gt_tracks).reshape(-1).tolist())
        region_offset += len(gt_boxes)
    if region_offset == 0:
        raise ValueError("RBDC/TBDC need at least one true anomalous region")
    det_scores = np.asarray(det_scores)
    det_false = np.asarray(det_false, dtype=bool)
    region_track = np.asarray(region_track)
    track_ids, track_index = np.unique(region_track, return_inverse=True)
    track_sizes = np.bincount(track_index)

    order = np.argsort(-det_scores, kind="mergesort")
    detected = np.zeros(region_offset, dtype=bool)
    track_hits = np.zeros(len(track_ids))
    fpr, rbdr, tbdr = [0.0], [0.0], [0.0]
    false_positives = 0
    k = 0
    while k < len(order):
        threshold = det_scores[order[k]]
        while k < len(order) and det_scores[order[k]] == threshold:  # all detections tied at this score
            d = order[k]
            false_positives += det_false[d]
            new = det_hits[d][~detected[det_hits[d]]]
            detected[new] = True
            np.add.at(track_hits, track_index[new], 1)
            k += 1
        fpr.append(false_positives / frames)
        rbdr.append(detected.mean())
        tbdr.append(float(np.mean(track_hits / track_sizes >= track_fraction)))
    fpr, rbdr, tbdr = (np.asarray(v) for v in (fpr, rbdr, tbdr))

    def area(rate: np.ndarray) -> float:
        # The curve stays flat at its last rate beyond the last threshold.
        x = np.r_[fpr[fpr <= max_fpr], max_fpr]
        y = np.r_[rate[fpr <= max_fpr], rate[fpr <= max_fpr][-1]]
        return float(np.trapezoid(y, x) / max_fpr)

    return area(rbdr), area(tbdr)
