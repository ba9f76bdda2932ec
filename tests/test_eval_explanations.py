"""The explanation checker in eval/ (independent of the agent's verifier), on hand-built evidence."""

import numpy as np

from anomalens.eval.explanations import box_mask_iou, judge
from anomalens.types import Claim, Evidence, EvidenceKind, Measurement, MeasurementKind, Source

FRAME = Evidence(
    kind=EvidenceKind.FRAME,
    source=Source(tool="scene"),
    frame_index=5,
    frame_size=(100, 80),
    boxes=np.array([[10.0, 10.0, 20.0, 30.0], [50.0, 10.0, 60.0, 30.0]]),
    scores=np.array([2.0, 0.1]),
    labels=["display text only", "never read"],
    track_ids=np.array([7, 8]),
    headings=["E", "still"],
    zones=["r1c0", "r1c2"],
    measurements=[
        Measurement(name="speed", value=4.0, unit="px/frame", object_index=0),
        Measurement(kind=MeasurementKind.RULE_SEVERITY, name="speed-r1c0", value=2.5, unit="ratio", object_index=0),
    ],
)
CAPTION = Evidence(
    kind=EvidenceKind.CAPTION, source=Source(tool="caption"), frame_index=5, text="ignored: the checker reads the file"
)
RECORDS = {FRAME.id: FRAME, CAPTION.id: CAPTION}
CAPTIONS = [""] * 5 + ["A man rides a bicycle past two people."]
LABELS = np.array([0] * 10 + [1] * 5, dtype=bool)


def holds(**fields) -> bool:
    fields.setdefault("evidence_ids", [FRAME.id])
    return judge(Claim(id="c", **fields), RECORDS, CAPTIONS, LABELS)


def test_rules_numbers_counts_and_relations():
    assert holds(kind="rule", rule_id="speed-r1c0", track_id=7)
    assert not holds(kind="rule", rule_id="speed-r1c0", track_id=8)  # another object broke it
    assert not holds(kind="rule", rule_id="size-r1c0")
    assert holds(kind="measurement", quantity="speed", value=4.3, track_id=7)  # within 10%
    assert not holds(kind="measurement", quantity="speed", value=5.0, track_id=7)
    assert holds(kind="measurement", quantity="speed", value=40.0, unit="px/s", track_id=7)  # Ped2: 10 fps
    assert holds(kind="count", value=2) and not holds(kind="count", value=3)
    assert holds(kind="spatial", relation="left_of", track_id=7, other_track_id=8)
    assert not holds(kind="spatial", relation="above", track_id=7, other_track_id=8)
    assert not holds(kind="other") and not holds(kind="count", value=2, evidence_ids=["ev-gone"])


def test_words_come_from_the_caption_file_and_facts_from_the_objects_fields():
    assert holds(kind="object", term="bicycles", evidence_ids=[CAPTION.id])  # plural of the caption's word
    assert not holds(kind="object", term="bicycle", track_id=7, evidence_ids=[CAPTION.id])  # frame, not object
    assert not holds(kind="object", term="truck", evidence_ids=[CAPTION.id])
    assert not holds(kind="object", term="display text", track_id=7)  # labels are never read
    assert holds(kind="attribute", heading="E", track_id=7)
    assert not holds(kind="attribute", heading="E", track_id=8)
    assert holds(kind="spatial", zone="r1c2", track_id=8) and not holds(kind="spatial", zone="r1c0", track_id=8)


def test_time_ranges_must_overlap_the_ground_truth():
    assert holds(kind="temporal", frames=(8, 11)) and not holds(kind="temporal", frames=(0, 9))


def test_box_mask_iou_by_hand():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 2:4] = True  # 4 pixels
    assert box_mask_iou(np.array([2.0, 2.0, 4.0, 4.0]), mask) == 1.0
    assert box_mask_iou(np.array([2.0, 2.0, 6.0, 4.0]), mask) == 0.5  # 4 of 8
    assert box_mask_iou(np.array([6.0, 6.0, 8.0, 8.0]), mask) == 0.0
