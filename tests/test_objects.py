"""Objects in the scene: classes voted along tracks by a detector run only where and when motion is, looks
scored against the normal objects, rules that name classes, explanations that say what it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens.tools.objects import (
    UNKNOWN,
    Appearance,
    ObjectTagger,
    containment,
    coreset,
    grown,
)
from anomalens.types import Evidence, EvidenceKind, Source
from anomalens.video import Frame
from tests.conftest import stored_model


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_containment_is_the_share_of_each_blob_inside_each_box():
    blobs = np.array([[0, 0, 10, 10], [20, 20, 30, 40]], float)
    boxes = np.array([[5, 0, 100, 100], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(containment(blobs, boxes), [[0.5, 1.0], [1.0, 0.0]])
    assert containment(blobs, np.zeros((0, 4))).shape == (2, 0)


def test_grown_boxes_reach_the_minimum_side_and_move_into_the_frame():
    box = grown(np.array([50, 50, 60, 70]), 0.5, (100, 90), minimum=40)[0]
    np.testing.assert_allclose(box, [35, 40, 75, 80])  # 40 wide and tall around the centre
    edge = grown(np.array([0, 70, 10, 90]), 0.5, (100, 90), minimum=40)[0]
    np.testing.assert_allclose(edge, [0, 50, 40, 90])  # moved right and up rather than cut
    np.testing.assert_allclose(grown(np.array([0, 0, 90, 80]), 0.5, (100, 90))[0], [0, 0, 100, 90])


def test_a_coreset_keeps_a_rare_look_that_a_random_sample_of_its_size_would_likely_drop():
    rng = np.random.default_rng(0)
    common = unit(np.array([1.0, 0, 0]) + 0.01 * rng.normal(size=(500, 3)))
    rare = unit(np.array([[0, 1.0, 0]]))
    kept = coreset(np.concatenate([common, rare]), 10)
    assert len(kept) == 10
    assert (kept @ rare[0]).max() > 0.999


def test_appearance_puts_the_normal_edge_at_one_and_an_unseen_look_far_beyond_it():
    rng = np.random.default_rng(1)
    walkers = unit(np.array([1.0, 0.2, 0, 0]) + 0.05 * rng.normal(size=(400, 4)))
    looks = Appearance.fit((walkers[:200], walkers[200:]))
    held_out = unit(np.array([1.0, 0.2, 0, 0]) + 0.05 * rng.normal(size=(200, 4)))
    assert np.mean(looks.ratios(held_out) <= 1.0) > 0.95
    assert looks.ratios(unit(np.array([[0, 0, 1.0, 0]])))[0] > 5
    restored = Appearance.from_state(looks.state())
    np.testing.assert_allclose(restored.ratios(held_out), looks.ratios(held_out))
    with pytest.raises(ValueError, match="seen well enough"):
        Appearance.fit((walkers[:1], walkers[1:]))


class FakeDetector:
    """Finds a bicycle wherever its frame's left half is bright; records the regions it was given."""

    backend = "fake"

    def __init__(self):
        self.regions = []

    def detect(self, image, prompts, box_threshold=0.3, frame_index=None):
        self.regions.append(image.shape[:2])
        height, width = image.shape[:2]
        found = image[:, : width // 2].mean() > 100
        boxes = np.array([[0, 0, width, height]], float) if found else np.zeros((0, 4))
        names = ["bicycle"] * len(boxes)
        return Evidence(kind=EvidenceKind.DETECTION, source=Source(tool="detect"), frame_size=(width, height),
                        boxes=boxes, scores=np.full(len(boxes), 0.6), labels=names, class_names=names)  # fmt: skip


class FakeEmbedder:
    backend = "fake"

    def embed(self, image, boxes=None, frame_index=None, side=None):
        vectors = unit(np.array([[image.mean() + 1, 1.0, float(len(b))] for b in boxes]))
        return Evidence(kind=EvidenceKind.APPEARANCE, source=Source(tool="embed"), frame_size=image.shape[1::-1],
                        boxes=boxes, scores=np.ones(len(boxes)), labels=["crop"] * len(boxes),
                        embeddings=vectors)  # fmt: skip


class Facts:
    """What the tagger reads of motion's ``FrameFacts``."""

    def __init__(self, boxes, track_ids, established=None):
        self.boxes = np.asarray(boxes, float).reshape(-1, 4)
        self.track_ids = track_ids
        self.objects = [{"speed": 2.0, "height": float(b[3] - b[1])} for b in self.boxes]
        for obj, old in zip(self.objects, established or [True] * len(self.objects)):
            obj["established"] = old


def frame(index: int, bright: bool) -> Frame:
    image = np.full((120, 160, 3), 200 if bright else 20, np.uint8)
    return Frame(index=index, time_s=index / 10, image=image, scale=1.0, source_size=(160, 120))


def test_the_detector_runs_only_when_something_moves_and_its_class_stays_with_the_track():
    detector = FakeDetector()
    tagger = ObjectTagger(detector, FakeEmbedder(), fps=10, every=2)
    still = Facts(np.zeros((0, 4)), [])
    assert tagger.tag(frame(0, True), still) is None and detector.regions == []  # nothing moves: no detector

    moving = Facts([[20, 30, 30, 50]], [7])
    assert tagger.tag(frame(1, True), moving) is None  # looks fall on every other frame
    assert moving.objects[0]["class"] == UNKNOWN and detector.regions == []
    moving = Facts([[20, 30, 30, 50]], [7])
    looks = tagger.tag(frame(2, True), moving)
    assert moving.objects[0]["class"] == "bicycle" and moving.objects[0]["class_score"] == 1.0
    assert moving.objects[0]["relative_speed"] == pytest.approx(2.0 * 10 / 20)
    assert looks is not None and looks.indices.tolist() == [0] and looks.vectors.shape == (1, 3)
    # the region around the blob (10x20 grown by half on each side, at least 96 px), not the whole frame
    assert detector.regions == [(96, 96)]

    dark = Facts([[22, 30, 32, 50]], [7])
    assert tagger.tag(frame(3, False), dark) is None  # between looks: no detector, no embedding...
    assert dark.objects[0]["class"] == "bicycle"  # ...but the track keeps its class
    assert len(detector.regions) == 1

    newcomers = Facts([[22, 30, 32, 50], [100, 60, 104, 64], [60, 60, 80, 90]], [7, 8, 9], [True, True, False])
    tagger.tag(frame(4, False), newcomers)  # looked at: nothing found in the dark
    assert [o["class"] for o in newcomers.objects] == ["bicycle", UNKNOWN, UNKNOWN]
    assert len(detector.regions) == 2
    young = Facts([[60, 60, 80, 90]], [9], [False])
    assert tagger.tag(frame(6, True), young) is None and len(detector.regions) == 2  # too young to look at


def test_a_blob_merging_a_rider_and_a_bicycle_is_named_by_the_bicycle_a_lone_rider_by_the_best_detection():
    class Rider:  # a person on a bicycle, and a skateboard elsewhere: boxes in the region given (the whole frame)
        def detect(self, image, prompts, box_threshold=0.3, frame_index=None):
            boxes = np.array([[60, 20, 90, 80], [50, 60, 110, 100], [0, 0, 10, 10]], float)
            names = ["person", "bicycle", "skateboard"]
            return Evidence(kind=EvidenceKind.DETECTION, source=Source(tool="detect"), frame_size=image.shape[1::-1],
                            boxes=boxes, scores=np.array([0.55, 0.4, 0.9]), labels=names, class_names=names)  # fmt: skip

    tagger = ObjectTagger(Rider(), None, fps=10, every=1)
    # the merged blob holds both detections (neither holds half of it): the person scores higher, but what moves is
    # a cyclist; the small blob lies inside the person's box alone
    facts = Facts([[40, 20, 120, 100], [62, 30, 70, 50], [130, 100, 150, 118]], [1, 2, 3])
    tagger.tag(frame(0, True), facts)
    assert [o["class"] for o in facts.objects] == ["bicycle", "person", UNKNOWN]


def test_settled_tracks_are_looked_at_again_only_every_relook_seconds_all_on_the_same_frames():
    detector = FakeDetector()
    tagger = ObjectTagger(detector, FakeEmbedder(), fps=10, every=2, relook_seconds=2.0)
    looked = {}
    for index in range(40):  # a walker for 4 s, a second one from 0.7 s on
        boxes, ids = [[20 + index, 30, 30 + index, 50]], [3]
        if index >= 7:
            boxes, ids = [*boxes, [100, 30, 110, 50]], [3, 4]
        looks = tagger.tag(frame(index, True), Facts(boxes, ids))
        if looks is not None:
            looked[index] = [ids[i] for i in looks.indices]
    # FIRST_LOOKS (2) looks on the next look frames (every other frame), then one every 2 s on the shared clock:
    # the detector and the embedder alike, one detector run for both walkers at 2 s
    assert looked == {0: [3], 2: [3], 8: [4], 10: [4], 20: [3, 4]}
    assert len(detector.regions) == len(looked)
    eager = ObjectTagger(FakeDetector(), None, fps=10, every=2, relook_seconds=0.0)  # as learning a scene does
    for index in range(40):
        eager.tag(frame(index, True), Facts([[20, 30, 30, 50]], [3]))
    assert eager.detector_runs == 20


def test_a_tagger_without_a_detector_leaves_objects_unnamed_but_still_measures_their_look():
    tagger = ObjectTagger(None, FakeEmbedder(), fps=10)
    facts = Facts([[20, 30, 30, 50], [0, 0, 3, 3], [60, 30, 70, 50]], [1, 2, 3], established=[True, True, False])
    looks = tagger.tag(frame(0, True), facts)
    assert [o["class"] for o in facts.objects] == [UNKNOWN] * 3
    assert looks.indices.tolist() == [0]  # the 3x3 blob is too small to embed, track 3 too young to judge


def test_induced_rules_name_the_classes_seen_and_how_fast_each_moves_for_its_size():
    from anomalens.rules.engine import RuleIndex, check
    from anomalens.tools.rule_induction import induce_rules

    rng = np.random.default_rng(2)
    objects = []
    for k in range(400):
        name = "person" if k % 4 else UNKNOWN
        objects.append({"class": name, "relative_speed": float(rng.uniform(0.1, 0.8)), "speed": 1.0, "area": 100.0,
                        "zone": "r0c0", "direction": "E", "established": True, "count": 3.0, "occupancy": 0.1,
                        "dwell": 1.0})  # fmt: skip
    rulebook = induce_rules(objects, ["r0c0"])
    classes = rulebook.get("classes")
    assert classes.predicate.value == ["person", UNKNOWN]
    assert classes.sentence == "Every moving thing is a person, or not recognised."
    walking = rulebook.get("relative-speed-person")
    assert walking.predicate.where == {"class": "person"} and 0.8 < walking.predicate.value < 1.1

    index = RuleIndex(rulebook)
    bicycle = objects[1] | {"class": "bicycle"}
    assert any(r.rule.id == "classes" and r.violated for r in check(index.object_rules(bicycle), bicycle))
    runner = objects[1] | {"relative_speed": 3.0}
    (result,) = [r for r in check(index.object_rules(runner), runner) if r.rule.id == "relative-speed-person"]
    assert result.violated
    young = bicycle | {"established": False}  # a class, like a zone, is judged once the track is established
    assert all(r.rule.id != "classes" for r in check(index.object_rules(young), young))


def test_a_zone_where_only_some_of_the_scenes_classes_move_gets_a_rule_naming_the_others():
    from anomalens.rules.engine import RuleIndex, check
    from anomalens.tools.rule_induction import induce_rules

    base = {"relative_speed": 0.5, "speed": 1.0, "area": 100.0, "direction": "E", "established": True,
            "count": 3.0, "occupancy": 0.1, "dwell": 1.0}  # fmt: skip
    road = [base | {"class": "car" if k % 2 else "person", "zone": "r1c0"} for k in range(100)]
    walkway = [base | {"class": "person", "zone": "r0c0"} for _ in range(100)]
    rulebook = induce_rules(road + walkway, ["r0c0", "r1c0"])
    assert rulebook.get("classes").predicate.value == ["car", "person", UNKNOWN]
    walkway_rule = rulebook.get("classes-r0c0")
    assert walkway_rule.predicate.where == {"zone": "r0c0"}
    assert walkway_rule.sentence.startswith("No car in zone r0c0: only a person moves there")
    assert not any(rule.id == "classes-r1c0" for rule in rulebook.rules)  # every class of the scene is seen there

    index = RuleIndex(rulebook)
    car_on_walkway = walkway[0] | {"class": "car"}
    assert any(r.rule.id == "classes-r0c0" and r.violated for r in check(index.object_rules(car_on_walkway),
                                                                         car_on_walkway))  # fmt: skip
    car_on_road = road[1]
    assert not any(r.violated for r in check(index.object_rules(car_on_road), car_on_road))


def test_the_deterministic_explanation_and_the_digest_say_what_the_object_is():
    from anomalens.agents.digest import _peak_facts
    from anomalens.pipelines.describe import Describer
    from anomalens.types import (
        Event,
        Measurement,
        MeasurementKind,
        Predicate,
        Rule,
        Rulebook,
    )

    rule = Rule(id="relative-speed-person", sentence="A person moves at most 1.00 body heights per second.",
                predicate=Predicate(fact="relative_speed", op="<=", value=1.0, where={"class": "person"}),
                stats={"max": 0.8})  # fmt: skip
    evidence = Evidence(
        kind=EvidenceKind.FRAME, source=Source(tool="scene"), frame_index=40, time_s=4.0, frame_size=(360, 240),
        boxes=np.array([[10.0, 10, 30, 60]]), scores=np.array([2.5]), labels=["track 3"],
        track_ids=np.array([3]), class_names=["bicycle"], class_scores=np.array([0.9]), headings=["E"],
        zones=["r1c0"],
        measurements=[
            Measurement(name="relative_speed", value=2.5, unit="heights/s", object_index=0),
            Measurement(name="appearance", value=1.8, unit="ratio", object_index=0),
            Measurement(kind=MeasurementKind.RULE_SEVERITY, name=rule.id, value=2.5, unit="ratio", object_index=0),
        ],
    )  # fmt: skip
    event = Event(id="E1", start_frame=30, end_frame=50, start_s=3.0, end_s=5.0, score=2.5, peak_frame=40,
                  evidence_ids=[evidence.id], rule_ids=[rule.id], track_ids=[3])  # fmt: skip
    text = Describer(Rulebook(rules=[rule]))(event, [evidence], evidence)
    assert "a bicycle moving east in zone r1c0 (track 3)" in text
    assert "(3.1 times the highest relative speed in normal footage)" in text
    assert "looked unlike every object of normal footage at 4.0 s: 1.8x the normal edge" in text

    claims = [json.dumps(claim) for claim, _ in _peak_facts(evidence)]
    assert any('"kind": "object"' in c and '"term": "bicycle"' in c and '"track": 3' in c for c in claims)
    assert any('"quantity": "appearance"' in c for c in claims)


@pytest.mark.data
@pytest.mark.slow
def test_on_ped2_the_scene_names_people_and_scores_a_cyclists_video_above_its_normal_frames(shared_data, tmp_path):
    """Learned on two training videos with the real detector and embedder, saved and read back; test video 02 (a
    cyclist among walkers): its anomalous frames outscore its normal ones, and an event names a class."""
    pytest.importorskip("onnxruntime", reason="pip install 'anomalens[vision]'")
    from anomalens.eval.metrics import roc_auc
    from anomalens.pipelines import learn_scene
    from anomalens.pipelines.audit import screen_video
    from anomalens.tools.scene import Scene

    stored_model("centernet-mobilenetv3")
    stored_model("efficientnet-lite0")
    ped2 = shared_data / "ucsd_ped2"
    learned = learn_scene([ped2 / "train" / "01", ped2 / "train" / "02"], out=tmp_path / "scene", fps=10,
                          objects=True, progress=False)  # fmt: skip
    scene = Scene.load(tmp_path / "scene")
    assert scene.objects == learned.objects == {"detector": "detector:centernet",
                                                "embedder": "embedder:efficientnet-lite0"}  # fmt: skip
    np.testing.assert_array_equal(scene.appearance.bank, learned.appearance.bank)
    assert "person" in scene.rulebook.get("classes").predicate.value
    result = screen_video(scene.open(ped2 / "test" / "02"), scene, progress=False).result
    labels = np.asarray(json.loads((ped2 / "labels.json").read_text())["02"])
    assert roc_auc(labels, result.scores) > 0.9
    assert result.events and any(name in result.events[0].summary for name in ("a person", "a bicycle"))


def test_chat_finds_when_a_kind_of_object_was_seen_from_screenings_named_objects():
    from anomalens.agents.index import VideoIndex, handle
    from anomalens.agents.llm import ToolCall
    from anomalens.agents.toolbox import ToolArgumentError, Toolbox
    from anomalens.tools.coco import ClassNamer

    def frame_evidence(k: int, names: list[str]) -> Evidence:
        return Evidence(kind=EvidenceKind.FRAME, source=Source(tool="scene"), frame_index=k, time_s=k / 10,
                        frame_size=(360, 240), boxes=np.tile([10.0, 10, 30, 60], (len(names), 1)),
                        scores=np.zeros(len(names)), labels=[f"track {t}" for t in range(len(names))],
                        track_ids=np.arange(len(names)), class_names=names)  # fmt: skip

    names = {k: ["person"] + (["bicycle"] if 20 <= k <= 24 or 40 <= k <= 41 else []) for k in range(60)}
    evidence = [frame_evidence(k, n) for k, n in names.items()]
    index = VideoIndex(video="v.avi", fps=10, source_size=(360, 240), frames=60, threshold=1.0, events=[],
                       evidence=evidence)  # fmt: skip

    class Encoder:  # "a cyclist" lies nearest "bicycle", "the weather" near nothing
        def embed(self, texts):
            known = {"bicycle": [1.0, 0.1], "a cyclist": [1.0, 0.1], "person": [0.1, 1.0], "the weather": [0.0, -1.0]}
            return unit(np.array([known.get(t, [-1.0, 0.0]) for t in texts]))

    toolbox = Toolbox(index, chat=True, namer=ClassNamer(Encoder()))
    said = toolbox.call(ToolCall(id="1", name="appears", arguments={"text": "a cyclist"}), None).text
    assert said == (f"a bicycle was seen moving in 7 frames: frames 20-24 (2.0-2.4 s) [{handle(evidence[20])}], "
                    f"frames 40-41 (4.0-4.1 s) [{handle(evidence[40])}]")  # fmt: skip
    said = toolbox.call(ToolCall(id="2", name="appears", arguments={"text": "cars"}), None).text
    assert said == "a car was never seen moving in the 60 frames"
    with pytest.raises(ToolArgumentError, match="names no kind of object"):
        toolbox.call(ToolCall(id="3", name="appears", arguments={"text": "the weather"}), None)

    unnamed = index.model_copy(update={"evidence": [frame_evidence(k, [UNKNOWN]) for k in range(5)]})
    assert "appears" not in {spec.name for spec in Toolbox(unnamed, chat=True).specs}


def test_with_no_normal_footage_the_everyday_anomalies_classes_and_running_are_assumed_absent():
    from anomalens.rules.captions import everyday_anomalies, parse_rule_text
    from anomalens.rules.engine import RuleIndex, check
    from anomalens.tools.rule_induction import everyday_priors
    from anomalens.types import Rulebook

    (prior,) = everyday_priors(everyday_anomalies())  # with no walkers seen, no walking pace to compare with
    prior, speed = everyday_priors(everyday_anomalies(), walking=0.5)
    assert speed.predicate.value == pytest.approx(1.0)  # twice the footage's typical walker
    assert {"bicycle", "car", "skateboard", "truck", "motorcycle"} <= set(prior.predicate.value)
    assert "person" not in prior.predicate.value  # "people fleeing": what people do, not that they are there
    index = RuleIndex(Rulebook(rules=[prior]))
    cart = {"class": "truck", "established": True}
    assert [r.violated for r in check(index.object_rules(cart), cart)] == [True]
    walker = {"class": "person", "established": True}
    assert [r.violated for r in check(index.object_rules(walker), walker)] == [False]
    index = RuleIndex(Rulebook(rules=[speed]))
    walker["relative_speed"] = 0.6
    rider = {"class": "person", "established": True, "relative_speed": 1.5}  # a cyclist named only as its rider
    assert [[r.violated for r in check(index.object_rules(o), o)] for o in (walker, rider)] == [[False], [True]]
    (only_running,) = everyday_priors(parse_rule_text("Anomalies:\n1. Running or jumping\n"), walking=0.5)
    assert only_running.predicate.fact == "relative_speed"
    assert everyday_priors(parse_rule_text("Anomalies:\n1. Jumping\n")) == []
