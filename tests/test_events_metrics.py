import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomalens.eval.metrics import roc_auc
from anomalens.events import group_events, smooth


def test_smooth_is_a_centred_mean_that_uses_only_existing_edge_frames():
    scores = np.array([0.0, 3.0, 6.0, 0.0, 9.0])
    np.testing.assert_allclose(smooth(scores, 3), [1.5, 3.0, 3.0, 5.0, 4.5])
    np.testing.assert_array_equal(smooth(scores, 1), scores)
    with pytest.raises(ValueError, match="odd"):
        smooth(scores, 4)


def test_group_events_merges_gaps_drops_short_runs_and_finds_peaks():
    frames = np.arange(0, 40, 2)  # strided by 2: source frame indices
    scores = np.zeros(20)
    scores[[2, 3, 5]] = [2.0, 3.0, 2.5]  # one gap of one sample -> merged with max_gap=1
    scores[12] = 5.0  # a single sample -> dropped with min_frames=2
    scores[15:18] = [1.5, 1.8, 1.2]
    events = group_events(frames, scores, 1.0, fps=10.0, min_frames=2, max_gap=1)
    assert [(e.start_frame, e.end_frame, e.peak_frame) for e in events] == [(4, 10, 6), (30, 34, 32)]
    assert events[0].score == 3.0 and events[0].start_s == pytest.approx(0.4) and events[1].end_s == pytest.approx(3.4)
    assert [e.id for e in events] == ["event-1", "event-2"]
    split = group_events(frames, scores, 1.0, fps=10.0, min_frames=1, max_gap=0)
    assert [(e.start_frame, e.end_frame) for e in split] == [(4, 6), (10, 10), (24, 24), (30, 34)]
    assert group_events(frames, scores, 10.0, fps=10.0) == []


def test_roc_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 200)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="both normal and anomalous"):
        roc_auc([1, 1], [0.1, 0.2])
