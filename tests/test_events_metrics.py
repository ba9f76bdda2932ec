import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomalens.eval.metrics import roc_auc
from anomalens.events import group_events, outlier_level, smooth
from tests.helpers.screening import ScriptedScorer


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


def test_outlier_level_is_the_median_plus_robust_spreads():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, absolute deviations 2 1 0 1 97 -> MAD 1
    assert outlier_level(values) == pytest.approx(3 + 4 * 1.4826)
    assert outlier_level(values, spread=1.0) == pytest.approx(3 + 1.4826)
    assert outlier_level(np.full(10, 0.7)) == pytest.approx(0.7)  # no spread: anything above the level stands out


def test_self_referenced_screening_calls_only_the_footages_own_outliers_events(tmp_path):
    import cv2

    from anomalens.tools.screening import screen
    from anomalens.video import FrameSource

    for k in range(120):
        cv2.imwrite(str(tmp_path / f"{k:03d}.png"), np.zeros((24, 32, 3), np.uint8))
    busy = 1.5 + 0.1 * np.sin(np.arange(120))  # a busy scene: over the rules' limit all the time
    busy[60:75] = 6.0  # and one stretch far beyond its own typical level

    def run(**options):
        return screen(FrameSource(tmp_path, fps=10.0), ScriptedScorer(busy), progress=False, **options)

    plain, own = run(), run(self_referenced=True)
    assert [(e.start_frame, e.end_frame) for e in plain.events] == [(0, 119)] and plain.threshold == 1.0
    assert own.threshold == pytest.approx(outlier_level(own.scores)) and own.threshold > 1.5
    assert len(own.events) == 1 and 55 <= own.events[0].start_frame <= 60 and 75 <= own.events[0].end_frame <= 80
    quiet = busy * 0.2  # typical footage below the limit: the limit itself decides
    busy[:] = quiet
    assert run(self_referenced=True).threshold == 1.0


def test_what_breaks_an_everyday_prior_stays_an_event_above_a_self_referenced_threshold(tmp_path):
    import cv2

    from anomalens.tools.screening import screen
    from anomalens.video import FrameSource

    for k in range(120):
        cv2.imwrite(str(tmp_path / f"{k:03d}.png"), np.zeros((24, 32, 3), np.uint8))
    busy = 1.5 + 0.1 * np.sin(np.arange(120))  # a cart in most frames: its breaches are the footage's own level
    rule = {k: "everyday-classes" for k in range(90, 105)} | {k: "speed-any" for k in range(20, 35)}

    result = screen(FrameSource(tmp_path, fps=10.0), ScriptedScorer(busy, rule), progress=False, self_referenced=True,
                    priors={"everyday-classes"})  # fmt: skip
    assert result.threshold > 1.5  # raised to the footage's own level...
    # ...yet the frames breaking a prior are an event; those breaking a learned rule as often as the rest are not
    assert [(e.start_frame, e.end_frame, e.rule_ids) for e in result.events] == [(90, 104, ["everyday-classes"])]


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


def test_average_precision_and_best_f1_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score

    from anomalens.eval.metrics import average_precision, best_f1

    rng = np.random.default_rng(3)
    for _ in range(10):
        labels = rng.integers(0, 2, 150)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(labels * 0.8, 1.0), 1)
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        f1, threshold = best_f1(labels, scores)
        brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
        assert f1 == pytest.approx(brute, abs=1e-12)
        assert f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)


def test_macro_auc_skips_single_class_videos():
    from anomalens.eval.metrics import macro_auc

    mean, per_video = macro_auc(
        {"a": (np.array([0, 1, 1]), np.array([0.1, 0.9, 0.8])), "b": (np.array([1, 1]), np.array([0.2, 0.3])),
         "c": (np.array([0, 1]), np.array([0.7, 0.2]))}
    )
    assert per_video == {"a": 1.0, "c": 0.0} and mean == 0.5


def test_per_video_normalisation_hides_how_scores_compare_across_videos():
    from anomalens.eval.metrics import per_video_normalised_auc, roc_auc

    per_video = {"quiet": (np.array([0, 1]), np.array([0.1, 0.2])), "busy": (np.array([0, 1]), np.array([5.0, 9.0]))}
    labels = np.array([0, 1, 0, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 5.0, 9.0])) == 0.75  # the busy video's normal frame outscores
    assert per_video_normalised_auc(per_video) == 1.0


def test_rbdc_tbdc_on_a_hand_computed_case():
    from anomalens.eval.metrics import rbdc_tbdc

    box = np.array([[0, 0, 10, 10]], float)
    far = np.array([[50, 50, 60, 60]], float)
    truth = [(box, np.array([0])), (box, np.array([0])), (np.zeros((0, 4)), np.zeros(0, int)), (far, np.array([1]))]
    # frame 0: a hit at 0.9; frame 1: a miss (wrong place) at 0.8; frame 2: a false positive at 0.7;
    # frame 3: a hit of the second track at 0.6.
    detections = [
        (box, np.array([0.9])),
        (far, np.array([0.8])),
        (box, np.array([0.7])),
        (far, np.array([0.6])),
    ]
    rbdc, tbdc = rbdc_tbdc(detections, truth)
    # Thresholds: 0.9 -> regions 1/3, fpr 0; 0.8 -> 1/3, fpr 1/4; 0.7 -> 1/3, fpr 2/4; 0.6 -> 2/3, fpr 2/4.
    # Area for fpr in [0, 1]: rate 1/3 from 0 to 0.5, then flat at 2/3 from 0.5 to 1.
    assert rbdc == pytest.approx(0.5 * (1 / 3) + 0.5 * (2 / 3))
    # Tracks: track 0 is detected from the first threshold (1 of its 2 regions >= 10%), track 1 at 0.6.
    assert tbdc == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    with pytest.raises(ValueError, match="frames of detections"):
        rbdc_tbdc(detections[:2], truth)


def test_an_event_a_cue_alone_raises_keeps_its_keyframe_from_the_one_decoding_pass(tmp_path):
    import cv2

    from anomalens.tools.screening import screen
    from anomalens.types import CueReason
    from anomalens.video import FrameSource

    for k in range(100):
        cv2.imwrite(str(tmp_path / f"{k:03d}.png"), np.full((24, 32, 3), k, np.uint8))
    own = 0.2 + 0.1 * np.sin(np.arange(100))  # motion never reaches the threshold

    class Captions:  # says frames 40-60 are anomalous
        origin = "captions.txt"

        def levels(self, frames):
            return np.where((frames >= 40) & (frames <= 60), 2.0, 0.0)

        def reason(self, start, end):
            return CueReason(cue="captions", phrase="riding a bicycle", rule_id="anomaly-1", sentence="No cycling",
                             first_frame=40, last_frame=60)  # fmt: skip

    source = FrameSource(tmp_path, fps=10.0)
    source.read = lambda index: pytest.fail(f"frame {index} was decoded twice")
    described = lambda event, cited, key: "why"  # noqa: E731
    result = screen(source, ScriptedScorer(own), cues=[Captions()], describe=described, progress=False)
    (event,) = result.events
    assert 35 <= event.start_frame <= 40 and 60 <= event.end_frame <= 65
    assert event.reasons[0].phrase == "riding a bicycle"
    frame, evidence = result.keyframes[event.id]
    # Among the frames the cue names, the keyframe is the one motion scores highest.
    assert frame.index == evidence.frame_index == event.peak_frame == 40 + int(np.argmax(own[40:61]))
    assert frame.image[0, 0, 0] == frame.index and event.summary == "why"
