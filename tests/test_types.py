import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from anomalens.arrays import decode_masks, encode_masks
from anomalens.types import (
    Claim,
    Event,
    Evidence,
    EvidenceKind,
    Explanation,
    Measurement,
    MeasurementKind,
    Predicate,
    Rule,
    Rulebook,
    Source,
    Track,
    Verdict,
)

SRC = Source(tool="test", backend="unit")


def make_evidence(**overrides) -> Evidence:
    rng = np.random.default_rng(0)
    masks = rng.random((2, 24, 32)) > 0.7
    fields = dict(
        kind=EvidenceKind.DETECTION,
        source=SRC,
        frame_index=7,
        time_s=0.7,
        frame_size=(32, 24),
        boxes=[[0, 0, 10, 12], [4.5, 3, 32, 24]],
        scores=[0.9, 0.25],
        labels=["person", "bicycle"],
        track_ids=[3, 4],
        class_names=["person", "bicycle"],
        class_scores=[0.9, 0.25],
        headings=["E", "still"],
        zones=["r0c0", "r1c2"],
        keypoints=rng.random((2, 17, 3)),
        embeddings=rng.random((2, 8)),
        masks=masks,
        anomaly_map=rng.random((6, 8)).astype(np.float32),
        frame_score=1.7,
        measurements=[
            Measurement(name="speed", value=7.25, unit="px/frame", object_index=1),
            Measurement(kind=MeasurementKind.RULE_SEVERITY, name="speed", value=2.5, unit="ratio", object_index=1),
            Measurement(kind=MeasurementKind.TEXT_SIMILARITY, name="a bicycle", value=0.31, unit="cosine"),
        ],
    )
    fields.update(overrides)
    return Evidence(**fields)


def test_evidence_json_round_trip_keeps_every_field():
    ev = make_evidence()
    back = Evidence.model_validate_json(ev.model_dump_json())
    assert back.id == ev.id
    np.testing.assert_array_equal(back.boxes, ev.boxes)
    np.testing.assert_array_equal(back.scores, ev.scores)
    np.testing.assert_array_equal(back.track_ids, ev.track_ids)
    np.testing.assert_array_equal(back.masks, ev.masks)
    np.testing.assert_allclose(back.anomaly_map, ev.anomaly_map, atol=1e-3)  # stored as float16
    assert back.labels == ev.labels and back.frame_size == (32, 24)
    assert back.kind is EvidenceKind.DETECTION
    assert (back.class_names, back.headings, back.zones) == (ev.class_names, ev.headings, ev.zones)
    np.testing.assert_allclose(back.keypoints, ev.keypoints)
    np.testing.assert_allclose(back.embeddings, ev.embeddings)
    # Each kind of measurement is read by its own accessor: a rule and a quantity may share a name.
    assert back.measurement("speed", 1).value == 7.25
    assert back.breaches() == [("speed", 2.5, 1)] and back.similarities() == {"a bicycle": 0.31}
    # masks travel as run lengths, not as a list of booleans
    payload = json.loads(ev.model_dump_json())
    assert set(payload["masks"]) == {"shape", "counts"}


def test_evidence_id_is_stable_and_content_derived():
    assert make_evidence().id == make_evidence().id
    assert make_evidence().id != make_evidence(scores=[0.9, 0.3]).id
    assert make_evidence().id.startswith("ev-test-7-")
    assert make_evidence(id="mine").id == "mine"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"scores": [0.9]}, "2 boxes but 1 scores"),
        ({"labels": ["a", "b", "c"]}, "3 labels"),
        ({"track_ids": [1]}, "1 track_ids"),
        ({"class_names": ["person"]}, "1 class_names"),
        ({"headings": ["E", "up"]}, "headings"),
        ({"zones": ["r0c0"]}, "1 zones"),
        ({"keypoints": np.zeros((2, 17))}, "keypoints must have shape (N, K, 3)"),
        ({"embeddings": np.zeros((3, 8))}, "3 embeddings"),
        ({"boxes": [[0, 0, 10, 12], [4, 3, 33, 24]]}, "inside the 32x24 frame"),
        ({"boxes": [[10, 0, 5, 12], [4, 3, 8, 24]]}, "x1 <= x2"),
        ({"boxes": [[0, 0, 1, 2, 3], [0, 0, 1, 2, 3]]}, "shape (N, 4)"),
        ({"frame_size": None}, "frame_size (width, height) is required"),
        ({"frame_size": (0, 24)}, "must be positive"),
        ({"masks": np.zeros((2, 32, 24), bool)}, "masks are (32, 24)"),
        ({"anomaly_map": np.zeros((2, 3, 4))}, "anomaly_map must be 2-D"),
        ({"measurements": [Measurement(name="x", value=1, unit="px", object_index=5)]}, "points at object 5"),
    ],
)
def test_evidence_rejects_inconsistent_fields(overrides, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_evidence(**overrides)


def test_empty_evidence_needs_no_frame_size():
    ev = Evidence(kind=EvidenceKind.FRAME, source=SRC, frame_index=0, frame_score=0.1)
    assert len(ev) == 0 and ev.boxes.shape == (0, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_mask_run_length_round_trip(n, h, w, seed):
    masks = np.random.default_rng(seed).random((n, h, w)) > 0.5
    np.testing.assert_array_equal(decode_masks(encode_masks(masks)), masks)


def test_track_and_event_validate_order():
    Track(id=1, frames=[3, 4, 6], boxes=np.zeros((3, 4)))
    with pytest.raises(ValidationError, match="strictly increasing"):
        Track(id=1, frames=[3, 3], boxes=np.zeros((2, 4)))
    with pytest.raises(ValidationError, match="boxes"):
        Track(id=1, frames=[3, 4], boxes=np.zeros((3, 4)))
    event = Event(id="e", start_frame=2, end_frame=5, start_s=0.2, end_s=0.5, peak_frame=3, score=1.5)
    with pytest.raises(ValidationError, match="frozen"):
        event.summary = "changed after it was built"
    with pytest.raises(ValidationError, match="ends before it starts"):
        Event(id="e", start_frame=5, end_frame=2, start_s=0.5, end_s=0.2, peak_frame=3, score=1.5)
    with pytest.raises(ValidationError, match="peak frame 9 outside"):
        Event(id="e", start_frame=2, end_frame=5, start_s=0.2, end_s=0.5, peak_frame=9, score=1.5)


def test_rulebook_round_trips_and_rejects_duplicates_and_bad_predicates():
    rule = Rule(
        id="walkway-speed",
        sentence="People on the walkway move at most 2.9 px/frame.",
        predicate=Predicate(fact="speed", op="<=", value=2.9, unit="px/frame", where={"zone": "walkway"}),
        margin=0.2,
        stats={"p99": 2.4, "n": 5120},
    )
    book = Rulebook(scene="walkway", rules=[rule])
    assert Rulebook.model_validate_json(book.model_dump_json()) == book
    assert book.get("walkway-speed") is rule
    with pytest.raises(KeyError, match="walkway-speed"):
        book.get("nope")
    with pytest.raises(ValidationError, match="duplicate rule ids: walkway-speed"):
        Rulebook(rules=[rule, rule])
    with pytest.raises(ValidationError, match="low <= high"):
        Predicate(fact="area", op="between", value=[5.0, 1.0])
    with pytest.raises(ValidationError, match="needs a list"):
        Predicate(fact="zone", op="in", value="lawn")
    with pytest.raises(ValidationError, match="needs a number"):
        Predicate(fact="speed", op="<=", value="fast")


def test_explanation_prose_uses_supported_claims_only():
    claims = [
        Claim(id="c1", text="A cyclist rides along the walkway", kind="object", evidence_ids=["ev-a"],
              verdict=Verdict(status="supported")),
        Claim(id="c2", text="He is carrying a gun", kind="object", evidence_ids=["ev-a"],
              verdict=Verdict(status="unsupported", reason="not re-detected")),
        Claim(id="c3", text="It is raining", kind="other", evidence_ids=["ev-b"]),
    ]
    explanation = Explanation(event_id="event-1", generator="scripted", claims=claims)
    assert explanation.prose == "A cyclist rides along the walkway."
    with pytest.raises(ValidationError, match="duplicate claim ids: c1"):
        Explanation(event_id="e", generator="g", claims=[claims[0], claims[0]])
    with pytest.raises(ValidationError):
        Claim(id="c4", text="uncited", kind="other", evidence_ids=[])
