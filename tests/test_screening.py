import json
from html.parser import HTMLParser

import numpy as np
import pytest

from anomalens.agents.screening import build_report, screen
from anomalens.errors import AnomalensError
from anomalens.eval.synthetic import load_masks
from anomalens.report import Report, timeline_svg, write_report
from anomalens.tools.occupancy import OccupancyScorer
from anomalens.video import FrameSource


@pytest.fixture(scope="module")
def screened(walkway):
    normal, test = walkway
    scorer = OccupancyScorer().fit(FrameSource(normal.video))
    result = screen(FrameSource(test.video), scorer, progress=False)
    truth = json.loads(test.events.read_text())
    return scorer, result, truth, load_masks(test.masks)


def test_normal_footage_stays_below_threshold(walkway):
    normal, _ = walkway
    frames = list(FrameSource(normal.video))
    scorer = OccupancyScorer().fit(frames[:160])
    held_out = [scorer.score(f).frame_score for f in frames[160:]]
    assert np.mean(np.array(held_out) > 1.0) < 0.05


@pytest.mark.parametrize("kind", ["lawn_crossing", "loitering", "left_object", "crowd"])
def test_occupancy_cues_find_and_localise_the_anomalies_they_cover(screened, kind):
    _, result, truth, masks = screened
    (gt,) = [g for g in truth if g["kind"] == kind]
    events = [e for e in result.events if e.start_frame <= gt["end_frame"] and gt["start_frame"] <= e.end_frame]
    assert events, f"no event overlaps the {kind} at frames {gt['start_frame']}-{gt['end_frame']}"
    # The cited evidence boxes cover pixels of the anomalous object in most of the cited frames.
    hits, cited = 0, 0
    for event in events:
        for evidence_id in event.evidence_ids:
            ev = result.evidence[evidence_id]
            if not gt["start_frame"] <= ev.frame_index <= gt["end_frame"]:
                continue
            cited += 1
            boxes = ev.boxes[ev.scores > 1.0].astype(int)
            mask = masks[ev.frame_index]
            hits += any(mask[y1:y2, x1:x2].any() for x1, y1, x2, y2 in boxes)
    assert cited and hits / cited > 0.5, f"{hits} of {cited} cited frames localise the {kind}"


def test_events_cite_evidence_that_exists_and_keyframes_have_maps(screened):
    _, result, _, _ = screened
    assert result.events
    for event in result.events:
        assert event.evidence_ids and all(i in result.evidence for i in event.evidence_ids)
        frame, evidence = result.keyframes[event.id]
        assert frame.index == event.peak_frame == evidence.frame_index
        assert evidence.anomaly_map is not None and evidence.anomaly_map.max() > 1.0
        assert event.summary and "normal" in event.summary


def test_keyframes_stay_bounded_and_missing_ones_are_decoded_again(walkway):
    normal, test = walkway
    scorer = OccupancyScorer().fit(FrameSource(normal.video))
    result = screen(FrameSource(test.video), scorer, max_keyframes=1, progress=False)
    with_maps = [e for e in result.keyframes.values() if e[1].anomaly_map is not None]
    assert len(result.events) > 1 and len(with_maps) == 1
    for event in result.events:
        frame, _ = result.keyframes[event.id]
        assert frame.image.shape == (240, 320, 3) and frame.index == event.peak_frame


def test_scorer_rejects_other_sizes_and_unfitted_use(walkway):
    normal, _ = walkway
    frames = list(FrameSource(normal.video, max_side=160))
    with pytest.raises(AnomalensError, match="before fit"):
        OccupancyScorer().score(frames[0])
    scorer = OccupancyScorer().fit(frames)
    with pytest.raises(AnomalensError, match="fitted at 160x120"):
        scorer.score(next(iter(FrameSource(normal.video))))
    with pytest.raises(AnomalensError, match="at least 10 normal frames"):
        OccupancyScorer().fit(frames[:3])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.ids.update(v for k, v in attrs if k == "id")


def test_report_json_validates_and_html_shows_timeline_and_keyframes(screened, tmp_path):
    _, result, _, _ = screened
    report, keyframes = build_report(result, title="t", scorer="occupancy")
    json_path, html_path = write_report(report, keyframes, tmp_path)
    back = Report.model_validate_json(json_path.read_text())
    assert [e.id for e in back.events] == [e.id for e in result.events]
    cited = {i for e in back.events for i in e.evidence_ids}
    assert cited <= {ev.id for ev in back.evidence}
    assert all(max(ev.anomaly_map.shape) <= 64 for ev in back.evidence if ev.anomaly_map is not None)
    page = _Tags()
    page.feed(html_path.read_text())
    assert page.tags.count("svg") == 1 and page.tags.count("img") == len(result.events)
    assert {e.id for e in result.events} <= page.ids
    assert oct(html_path.stat().st_mode & 0o777) != oct(0o600)


def test_timeline_marks_threshold_events_and_truth():
    from anomalens.report import GroundTruth
    from anomalens.types import Event

    event = Event(id="event-1", start_frame=10, end_frame=20, start_s=1, end_s=2, peak_frame=15, score=3)
    report = Report(
        title="t", input="x", fps=10, source_size=(8, 8), scorer="s", threshold=1.0,
        frame_indices=list(range(40)), scores=[0.5] * 40, events=[event], evidence=[],
        ground_truth=GroundTruth(labels=[0] * 12 + [1] * 6 + [0] * 22),
    )
    svg = timeline_svg(report)
    assert "threshold 1.00" in svg and 'href="#event-1"' in svg and "ground truth: frames 12-17" in svg
    assert svg.count("<polyline") == 1
