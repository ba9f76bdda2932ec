"""Objects: detector boxes are the objects, a moving region no box covers is one of its own, tracks carry every
fact, scores come from a density of normal objects, and the one table of facts is what everything reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens.facts import FACTS, OBJECT_FACTS, OBJECT_MEASURED, named
from anomalens.tools.motion import MotionModel
from anomalens.tools.objects.appearance import Appearance, coreset
from anomalens.tools.objects.density import ObjectDensity
from anomalens.tools.objects.describers import Movement, Naming, Place, Size, posture
from anomalens.tools.objects.follow import ObjectFollower
from anomalens.tools.objects.perspective import Perspective
from anomalens.tools.objects.sources import DetectorSource, Found, one_per_object, unknown_movers
from anomalens.tools.objects.tracks import TrackBook
from anomalens.types import Evidence, EvidenceKind, Predicate, Source, Track
from anomalens.video import Frame
from tests.helpers.environment import stored_model

WIDTH, HEIGHT, FPS = 160, 120, 10.0


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def picture(people: list[tuple[int, int]], size: tuple[int, int] = (8, 20)) -> np.ndarray:
    """A dark view with bright upright walkers whose top-left corners are ``people``, each of its own brightness."""
    image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    for k, (x, y) in enumerate(people):
        image[y : y + size[1], x : x + size[0]] = 220 - 30 * k
    return image


def frame(k: int, image: np.ndarray) -> Frame:
    return Frame(index=k, time_s=k / FPS, image=image, scale=1.0, source_size=(WIDTH, HEIGHT))


def background() -> MotionModel:
    empty = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    return MotionModel().fit_background([frame(k, empty) for k in range(12)])


class BoxDetector:
    """Finds a person around the pixels of each brightness a walker of ``picture`` has, at the score given; counts
    its runs."""

    backend = "fake"

    def __init__(self, score: float = 0.6, name: str = "person"):
        self.score, self.name, self.runs = score, name, 0

    def detect(self, image, prompts=(), box_threshold=0.3, frame_index=None):
        self.runs += 1
        boxes = []
        for level in sorted(set(np.unique(image[..., 0])) - {40}, reverse=True):
            ys, xs = np.nonzero(image[..., 0] == level)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        boxes = np.array(boxes, float).reshape(-1, 4)
        names = [self.name] * len(boxes)
        return Evidence(kind=EvidenceKind.DETECTION, source=Source(tool="detect"), frame_size=(image.shape[1], image.shape[0]),
                        boxes=boxes, scores=np.full(len(boxes), self.score), labels=names, class_names=names)  # fmt: skip


def test_the_facts_table_is_the_vocabulary_of_predicates_tracks_and_evidence():
    assert Predicate(fact="relative_speed", op="<=", value=1.5).fact == "relative_speed"
    with pytest.raises(ValueError, match="unknown fact 'velocity'"):
        Predicate(fact="velocity", op="<=", value=1.0)
    with pytest.raises(ValueError, match="never negative"):
        Predicate(fact="torso_angle", op="<=", value=-1.0)  # a measured fact of the table, so never negative
    with pytest.raises(ValueError, match="'count' is not a fact of objects"):
        Track(id=0, frames=[1], boxes=np.zeros((1, 4)), facts={"count": [3.0]})
    with pytest.raises(ValueError, match="2 frames but 1 values of speed"):
        Track(id=0, frames=[1, 2], boxes=np.zeros((2, 4)), facts={"speed": [3.0]})
    track = Track(id=0, frames=[1, 3], boxes=np.zeros((2, 4)), facts={"speed": [3.0, 4.0]})
    assert (track.fact("speed", 3), track.fact("speed", 2), track.alive(2), track.alive(4)) == (4.0, None, True, False)
    evidence = Evidence(kind=EvidenceKind.FRAME, source=Source(tool="scene"), frame_index=5, time_s=0.5,
                        frame_size=(WIDTH, HEIGHT), boxes=np.array([[0.0, 0, 10, 20]]), scores=np.zeros(1),
                        labels=["track 0"], class_names=[None], zones=["lawn"])  # fmt: skip
    assert evidence.fact("class", 0) is None and evidence.fact("zone", 0) == "lawn" and evidence.fact("time") == 0.5
    assert named(None) == "a moving thing the detector could not name" and named("umbrella") == "an umbrella"


def test_every_object_fact_has_a_describer_and_every_measured_one_reaches_the_evidence():
    from anomalens.tools.objects.describers import Look, Pose

    produced = {f for d in (Size, Place, Movement, Naming, Look, Pose) for f in d.facts} | {"novelty"}
    assert produced == set(OBJECT_FACTS)  # novelty: the scene's density, measured by its scorer
    model = background()
    follower = ObjectFollower(model, FPS, [Size(), Place(model.geometry), Movement(), Naming()])
    seen = [follower.step(frame(k, picture([(20 + 3 * k, 50)]))) for k in range(6)][-1]
    evidence = seen.evidence(Source(tool="scene"))
    have = {m.name for m in evidence.measurements if m.object_index == 0}
    assert have == {name for name in OBJECT_MEASURED if seen.states[0].latest(name) is not None}
    assert {"area", "speed", "relative_speed", "dwell"} <= have
    assert all(m.unit == FACTS[m.name].unit for m in evidence.measurements)
    assert evidence.headings == ["E"] and evidence.zones == [model.geometry.zone(*seen.states[0].feet[-1])]


def test_boxes_are_the_objects_and_a_blob_of_two_walkers_is_two_objects():
    """Two walkers side by side make one moving region; the detector's two boxes are the two objects."""
    model = background()
    detector = BoxDetector()
    source = DetectorSource(detector, floor=0.25, every=3)
    follower = ObjectFollower(model, FPS, [Movement(), Naming()], source=source)
    for k in range(8):
        seen = follower.step(frame(k, picture([(40 + 2 * k, 50), (49 + 2 * k, 52)])))
    assert len(seen.motion.blobs) == 1 and len(seen) == 2  # one region, two people
    assert [s.class_name for s in seen.states] == ["person", "person"]
    assert len({s.id for s in seen.states}) == 2 and all(len(s.frames) == 8 for s in seen.states)
    # Between detections the boxes moved with the flow (the walkers move 2 px a frame).
    assert abs(seen.boxes[0][0] - (40 + 2 * 7)) <= 1.5


def test_the_detector_runs_every_kth_frame_and_when_motion_appears_outside_the_boxes_it_follows():
    model = background()
    detector = BoxDetector()
    follower = ObjectFollower(model, FPS, [Movement(), Naming()], source=DetectorSource(detector, 0.25, every=5))
    for k in range(5):
        follower.step(frame(k, picture([(20 + k, 50)])))
    assert detector.runs == 1  # frame 0 only: the walker is followed between detections
    follower.step(frame(5, picture([(25, 50)])))
    assert detector.runs == 2  # the 5th frame
    follower.step(frame(6, picture([(26, 50), (120, 30)])))
    assert detector.runs == 3  # someone new, where nothing is followed
    quiet = ObjectFollower(model, FPS, [Naming()], source=DetectorSource(BoxDetector(), 0.25, every=5))
    for k in range(12):
        quiet.step(frame(k, picture([])))
    assert quiet.source.runs == 3  # nothing moves: only the scheduled looks


def test_a_moving_region_no_box_covers_is_an_object_nothing_named_unless_it_is_too_small():
    model = background()
    motion_frames = [frame(k, picture([(20 + k, 40), (100, 40)], size=(8, 20))) for k in range(2)]
    from anomalens.tools.motion import MotionField

    field = MotionField(model)
    motion = [field.step(f) for f in motion_frames][-1]
    boxes = np.array([[20.0, 40, 29, 60]])  # a box over the first walker only
    movers = unknown_movers(motion, boxes, None)
    assert len(movers) == 1 and movers.classes == [None] and movers.boxes[0][0] >= 99
    assert len(unknown_movers(motion, boxes, lambda y: 100.0)) == 0  # 8 px wide is noise where people are 100 px


def test_a_cut_is_a_view_that_moved_even_where_half_of_each_shot_matches_the_background():
    from anomalens.tools.motion import MotionField

    field = MotionField(background())
    left, right = np.full((HEIGHT, WIDTH, 3), 40, np.uint8), np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    left[:, : WIDTH // 2], right[:, WIDTH // 2 :] = 120, 120  # each shot differs from the background in half the view
    first, cut, same = (field.step(frame(k, image)) for k, image in enumerate((left, right, right)))
    assert not first.view_moved and cut.view_moved and not same.view_moved


def test_one_box_per_object_whatever_the_classes():
    found = Found(np.array([[0.0, 0, 10, 20], [1, 1, 10, 20], [30, 0, 40, 20]]), np.array([0.3, 0.6, 0.4]),
                  ["skateboard", "person", "person"])  # fmt: skip
    kept = one_per_object(found)
    assert kept.classes == ["person", "person"] and kept.scores.tolist() == [0.6, 0.4]


def test_a_box_mostly_inside_a_better_box_of_its_class_is_part_of_that_object():
    whole, upper_body, neighbour = [0.0, 0, 10, 30], [0.0, 0, 10, 14], [8.0, 0, 18, 30]  # IoU with the whole < NMS
    found = Found(np.array([whole, upper_body, neighbour]), np.array([0.6, 0.5, 0.4]), ["person"] * 3)
    assert one_per_object(found).boxes.tolist() == [whole, neighbour]  # the neighbour only overlaps: kept
    skis = Found(np.array([whole, [0.0, 24, 10, 30]]), np.array([0.6, 0.3]), ["person", "skis"])
    assert one_per_object(skis).classes == ["person"]  # what a walker stands on is the walker's
    pair = Found(np.array([[0.0, 0, 24, 30], whole, [12.0, 0, 22, 30]]), np.array([0.4, 0.6, 0.5]), ["person"] * 3)
    assert one_per_object(pair).boxes.tolist() == [whole, [12.0, 0, 22, 30]]  # two walkers, not three
    walker_before_a_bus = Found(np.array([[0.0, 0, 40, 30], [2.0, 5, 10, 30]]), np.array([0.6, 0.5]), ["bus", "person"])
    assert len(one_per_object(walker_before_a_bus)) == 2  # a person inside another class's box is a person


def test_an_object_moves_no_faster_than_its_box_however_fast_what_passes_before_it():
    """A parked van's box holds the flow of a walker passing in front of it; the van's box, found again at each
    detection, stays put."""
    model = background()
    walker_speed = 4
    van = Evidence(kind=EvidenceKind.DETECTION, source=Source(tool="detect"), frame_size=(WIDTH, HEIGHT),
                   boxes=np.array([[60.0, 40, 100, 70]]), scores=np.array([0.6]), labels=["car"], class_names=["car"])  # fmt: skip
    detector = BoxDetector()
    detector.detect = lambda *args, **kwargs: van
    follower = ObjectFollower(model, FPS, [Movement(), Naming()], source=DetectorSource(detector, 0.25, every=2))
    van_picture = picture([(60, 40)], size=(40, 30))
    for k in range(9):
        image = van_picture.copy()
        x = 56 + walker_speed * k
        image[40:70, x : x + 16] = 120 + (np.arange(16) * 8)[None, :, None]  # a textured walker before the van
        seen = follower.step(frame(k, image))
    car = next(i for i, s in enumerate(seen.states) if s.class_name == "car")
    assert seen.facts(car)["speed"] < 0.5 * walker_speed * FPS  # the van stood still


def test_bytetrack_holds_a_walker_whose_detection_weakens_and_the_first_frame_stays_on_the_track():
    book = TrackBook(FPS, high=0.5, start=0.25)
    boxes = [np.array([[10.0 + 2 * k, 20, 20 + 2 * k, 50]]) for k in range(10)]
    scores = [0.6, 0.6, 0.6, 0.3, 0.3, 0.3, 0.6, 0.6, 0.6, 0.6]  # half hidden for three frames: a weak detection
    states = [book.link(b, np.array([s]))[0] for b, s in zip(boxes, scores)]
    assert len({id(s) for s in states}) == 1 and len(book.all) == 1  # one track throughout, frame 0 included


def test_class_votes_come_from_detections_not_from_the_boxes_carried_between_them():
    model = background()
    follower = ObjectFollower(model, FPS, [Naming()], source=DetectorSource(BoxDetector(0.5, "bicycle"), 0.25, 4))
    for k in range(8):
        seen = follower.step(frame(k, picture([(20 + 2 * k, 50)])))
    (state,) = seen.states
    assert state.class_name == "bicycle" and state.votes["bicycle"] == pytest.approx(0.5 * 2)  # frames 0 and 4


def test_the_density_finds_a_fast_object_and_an_unseen_class_unusual_never_standing_still():
    rng = np.random.default_rng(0)
    speeds = np.abs(rng.normal(0.8, 0.1, 2000))
    speeds[::5] = 0.0  # a fifth of the normal objects stand still
    classes = ["person"] * 2000
    density = ObjectDensity.calibrated(((classes[:1000], speeds[:1000]), (classes[1000:], speeds[1000:])))
    held_out = np.abs(rng.normal(0.8, 0.1, 500))
    assert np.mean(density.ratios(["person"] * 500, held_out) <= 1.0) > 0.99
    walker, still, runner, cyclist = density.ratios(["person", "person", "person", "bicycle"], [0.8, 0.0, 2.0, 0.8])
    assert walker == still == 0.0 or still <= walker  # standing still is never unusual by itself
    assert runner > 1.0 and cyclist > 1.0
    assert density.ratios(["person"], [5.0])[0] > density.ratios(["person"], [2.0])[0]  # beyond the grid: rising
    restored = ObjectDensity.from_state({k: np.asarray(v) for k, v in density.state().items()})
    np.testing.assert_allclose(restored.ratios([None, "person"], [0.8, 2.0]), density.ratios([None, "person"], [0.8, 2.0]))
    with pytest.raises(ValueError, match="need at least 30"):
        ObjectDensity.fit(["person"] * 3, [0.1, 0.2, 0.3])


def test_the_perspective_goes_through_the_people_and_sets_the_flow_resolution():
    rng = np.random.default_rng(1)
    feet = rng.uniform(60, 240, 300)
    heights = 0.25 * feet + 5 + rng.normal(0, 1, 300)
    heights[:10] = 200  # a few merged boxes do not bend it
    fitted = Perspective.fit(feet, heights)
    assert fitted.height(200) == pytest.approx(55, abs=3) and fitted.height(0) == fitted.floor
    assert fitted.flow_scale() == pytest.approx(min(1.0, 32 / np.median(heights)))
    assert Perspective.fit(feet[:5], heights[:5]) is None
    assert Perspective.from_state(fitted.state()) == fitted


def test_posture_reads_the_torso_angle_and_the_raised_arms_from_keypoints():
    upright = np.zeros((17, 3))
    upright[:, 2] = 0.9
    upright[[5, 6], :2] = [[40, 20], [60, 20]]  # shoulders
    upright[[11, 12], :2] = [[42, 60], [58, 60]]  # hips
    upright[[9, 10], :2] = [[38, 50], [62, 5]]  # one wrist down, one above the shoulders
    angle, arms = posture(upright)
    assert angle == pytest.approx(0.0, abs=1) and arms == 1
    lying = upright.copy()
    lying[[5, 6], :2] = [[20, 60], [20, 70]]
    lying[[11, 12], :2] = [[60, 62], [60, 68]]
    assert posture(lying)[0] > 80
    unsure = upright.copy()
    unsure[11, 2] = 0.1
    assert posture(unsure)[0] is None


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


def test_induced_rules_name_the_classes_seen_and_never_limit_below_what_normal_footage_reached():
    from anomalens.rules.engine import RuleIndex, check
    from anomalens.tools.rule_induction import induce_rules

    rng = np.random.default_rng(2)
    objects = []
    for k in range(400):
        objects.append({"class": "person" if k % 4 else None, "relative_speed": float(rng.uniform(0.1, 0.8)),
                        "speed": float(rng.uniform(5, 20)), "area": 100.0, "zone": "r0c0", "direction": "E",
                        "established": True, "count": 3.0, "occupancy": 0.1, "dwell": float(rng.uniform(0, 5))})  # fmt: skip
    objects[7]["speed"] = 80.0  # one brisk walker of the normal footage: the limit clears it
    rulebook = induce_rules(objects, ["r0c0"])
    classes = rulebook.get("classes")
    assert classes.predicate.value == ["person"] and classes.sentence == "Every object the detector names is a person."
    assert rulebook.get("speed-any").predicate.value >= 80.0 and rulebook.get("speed-any").predicate.unit == "px/s"
    assert rulebook.get("dwell").predicate.value >= max(o["dwell"] for o in objects)
    assert rulebook.get("speed-any").sentence.endswith("px/s.")

    index = RuleIndex(rulebook)
    bicycle = objects[1] | {"class": "bicycle"}
    assert any(r.rule.id == "classes" and r.violated for r in check(index.object_rules(bicycle), bicycle))
    unnamed = objects[0]  # nothing named it: no class rule applies to it
    assert not any(r.rule.id.startswith("classes") for r in check(index.object_rules(unnamed), unnamed))


def test_a_zone_where_only_some_of_the_scenes_classes_move_gets_a_rule_naming_the_others():
    from anomalens.rules.engine import RuleIndex, check
    from anomalens.tools.rule_induction import induce_rules

    base = {"relative_speed": 0.5, "speed": 10.0, "area": 100.0, "direction": "E", "established": True,
            "count": 3.0, "occupancy": 0.1, "dwell": 1.0}  # fmt: skip
    road = [base | {"class": "car" if k % 2 else "person", "zone": "r1c0"} for k in range(100)]
    walkway = [base | {"class": "person", "zone": "r0c0"} for _ in range(100)]
    rulebook = induce_rules(road + walkway, ["r0c0", "r1c0"])
    assert rulebook.get("classes").predicate.value == ["car", "person"]
    walkway_rule = rulebook.get("classes-r0c0")
    assert walkway_rule.predicate.where == {"zone": "r0c0"}
    assert walkway_rule.sentence.startswith("No car in zone r0c0: only a person is named there")
    index = RuleIndex(rulebook)
    car_on_walkway = walkway[0] | {"class": "car"}
    assert any(r.rule.id == "classes-r0c0" and r.violated
               for r in check(index.object_rules(car_on_walkway), car_on_walkway))  # fmt: skip
    assert not any(r.violated for r in check(index.object_rules(road[1]), road[1]))


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


@pytest.mark.data
@pytest.mark.slow
def test_on_ped2_the_scene_names_people_and_scores_a_cyclists_video_above_its_normal_frames(shared_data, tmp_path):
    """Learned on two training videos with the real detector, saved and read back; test video 02 (a cyclist among
    walkers): its anomalous frames outscore its normal ones, and the cyclist's track is named."""
    pytest.importorskip("onnxruntime", reason="pip install 'anomalens[vision]'")
    from anomalens.eval.metrics import roc_auc
    from anomalens.pipelines import learn_scene
    from anomalens.pipelines.audit import screen_video
    from anomalens.tools.scene import Scene

    stored_model("nanodet-g")
    ped2 = shared_data / "ucsd_ped2"
    learned = learn_scene([ped2 / "train" / "01", ped2 / "train" / "02"], out=tmp_path / "scene", fps=10,
                          objects=True, progress=False)  # fmt: skip
    scene = Scene.load(tmp_path / "scene")
    assert scene.objects["detector"] == "detector:nanodet" and scene.floor == 0.25
    assert scene.perspective == learned.perspective and scene.density.classes == learned.density.classes
    screened = screen_video(scene.open(ped2 / "test" / "02"), scene, progress=False)
    labels = np.asarray(json.loads((ped2 / "labels.json").read_text())["02"])
    assert roc_auc(labels, screened.scores) > 0.95
    assert any(t.class_name == "bicycle" for t in screened.tracks)
