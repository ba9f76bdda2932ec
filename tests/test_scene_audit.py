"""Scene learning and auditing on synthetic scenes: every injected anomaly is detected, localised and
explained by the rule that describes it."""

import json

import numpy as np
import pytest
import yaml

from anomalens.agents.index import INDEX_FORMAT
from anomalens.errors import AnomalensError, ConfigError
from anomalens.eval.synthetic import load_masks
from anomalens.pipelines import audit, learn_scene
from anomalens.pipelines.audit import screen_video
from anomalens.report import REPORT_FORMAT, Report, load_report
from anomalens.tools.scene import Scene, SceneScorer
from anomalens.video import FrameSource

# The rule family that should explain each anomaly kind.
EXPECTED = {
    "cyclist": ("speed-",),
    "lawn_crossing": ("empty-",),
    "wrong_way": ("direction-",),
    "loitering": ("dwell",),
    "left_object": ("dwell",),
    "crowd": ("count", "occupancy", "size-"),
}


@pytest.fixture(scope="module")
def learned(walkway, tmp_path_factory):
    normal, _ = walkway
    folder = tmp_path_factory.mktemp("scene")
    learn_scene([normal.video], out=folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def audited(walkway, learned):
    _, test = walkway
    scene = Scene.load(learned)
    seen = {}  # frame index -> full evidence (with masks)

    def observe(frame, evidence):
        seen[frame.index] = evidence

    result = screen_video(scene.open(test.video), scene, observe=observe, progress=False)
    return scene, result, seen, json.loads(test.events.read_text()), load_masks(test.masks)


def test_scene_folder_round_trips(learned):
    scene = Scene.load(learned)
    assert (learned / "rules.yaml").is_file() and scene.analysis_size == (320, 240)
    assert scene.rulebook.rules and scene.model.background.shape == (240, 320)
    with pytest.raises(ConfigError, match="not a scene folder"):
        Scene.load(learned / "nowhere")


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_anomaly_is_detected_localised_and_explained_by_its_rule(audited, kind):
    _, result, seen, truth, masks = audited
    (gt,) = [g for g in truth if g["kind"] == kind]
    events = [e for e in result.events if e.start_frame <= gt["end_frame"] and gt["start_frame"] <= e.end_frame]
    assert events, f"no event overlaps the {kind} (frames {gt['start_frame']}-{gt['end_frame']})"
    # Explained by its rule: some object inside the true range breaks a rule of the expected family...
    family = EXPECTED[kind]
    ious = []
    for t in range(gt["start_frame"], gt["end_frame"] + 1):
        evidence = seen[t]
        for rule_id, _, index in evidence.breaches():
            if rule_id.startswith(family):
                if index is None:  # frame-level rule (crowding): localised by all objects
                    predicted = evidence.masks.any(axis=0)
                else:
                    predicted = evidence.masks[index]
                union = (predicted | masks[t]).sum()
                ious.append((predicted & masks[t]).sum() / union if union else 0.0)
    assert ious, f"no rule starting with {family} is broken during the {kind}"
    # ...and the objects breaking it are the anomalous ones (mask IoU with the true mask).
    assert np.median(ious) >= 0.3, f"median mask IoU {np.median(ious):.2f} for {kind}"
    assert any(r.startswith(family) for e in events for r in e.rule_ids)
    assert all(e.summary.startswith("From ") for e in events)


def test_normal_footage_raises_few_alarms(walkway):
    normal, _ = walkway
    frames = FrameSource(normal.video)
    half = len(frames) // 2
    scene = learn_scene([normal.video], progress=False)
    held_out = FrameSource(normal.video, start=half)
    result = screen_video(held_out, scene, progress=False)
    assert np.mean(result.scores > 1.0) < 0.1


def test_editing_the_rulebook_changes_the_audit(walkway, learned, tmp_path):
    _, test = walkway
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("scene.json", "motion.npz"):
        (edited / name).write_bytes((learned / name).read_bytes())
    data = yaml.safe_load((learned / "rules.yaml").read_text())
    for rule in data["rules"]:
        if rule["id"] == "dwell":
            rule["predicate"]["value"] = 1e6  # "things may stay forever"
    (edited / "rules.yaml").write_text(yaml.safe_dump(data))

    def dwell_breaches(folder):
        result = audit(test.video, folder, explainer="deterministic", progress=False)
        return sum("dwell" in e.rule_ids for e in result.events)

    assert dwell_breaches(learned) > 0
    assert dwell_breaches(edited) == 0


def test_audit_report_has_rule_table_keyframes_and_tracks(walkway, learned, tmp_path):
    _, test = walkway
    scene = Scene.load(learned)
    result = audit(test.video, scene, out=tmp_path, explainer="deterministic", progress=False)
    _, html_path = result.files
    html = html_path.read_text()
    assert "Rules broken" in html and html.count("<img") == len(result.events) + 1  # and the zone map
    assert 'alt="zone map"' in html
    back = load_report(tmp_path / "report.json")
    assert isinstance(back, Report) and back.rulebook == scene.rulebook
    cited = {i for e in back.events for i in e.track_ids}
    assert cited and {t.id for t in back.tracks} == cited
    assert all(len(t.frames) == len(t.boxes) >= 1 for t in back.tracks)
    for event in result.events:
        frame, evidence = result.screening.keyframes[event.id]
        assert evidence.masks is not None and len(evidence.masks) == len(evidence.boxes)


def test_scene_rejects_other_frame_sizes_and_too_little_footage(walkway, learned, tmp_path):
    import cv2

    normal, _ = walkway
    scene = Scene.load(learned)
    small = FrameSource(normal.video, max_side=160)
    with pytest.raises(AnomalensError, match="learned at 320x240"):
        SceneScorer(scene, small.fps).score(next(iter(small)))
    few = tmp_path / "few"
    few.mkdir()
    for frame in FrameSource(normal.video, stop=5):
        cv2.imwrite(str(few / f"{frame.index}.png"), frame.image)
    with pytest.raises(AnomalensError, match="at least 10 normal frames"):
        learn_scene([few], progress=False)


def test_reports_and_indexes_of_another_format_are_refused_by_name(walkway, learned, tmp_path):
    from anomalens.agents.index import VideoIndex

    _, test = walkway
    scene = Scene.load(learned)
    result = audit(test.video, scene, out=tmp_path, explainer="deterministic", progress=False)
    saved = VideoIndex.from_screening(result.screening, scene.rulebook).save(tmp_path / "index.json")
    assert VideoIndex.load(saved).events == result.events
    for path, what in ((tmp_path / "report.json", "report"), (saved, "video index")):
        data = json.loads(path.read_text())
        data.pop("format_version")  # as an earlier anomalens wrote them
        path.write_text(json.dumps(data))
        loader = load_report if what == "report" else VideoIndex.load
        reads = REPORT_FORMAT if what == "report" else INDEX_FORMAT
        with pytest.raises(ConfigError, match=rf"{path.name}: a {what} of an earlier anomalens .*reads format {reads}"):
            loader(path)
    (tmp_path / "garbage.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="garbage.json: not a report"):
        load_report(tmp_path / "garbage.json")


def test_two_crossing_walkers_keep_their_tracks_and_every_video_numbers_its_tracks_from_zero():
    from anomalens.tools.motion import MotionModel
    from anomalens.tools.objects.describers import Movement
    from anomalens.tools.objects.follow import ObjectFollower
    from anomalens.video import Frame

    def image(k: int) -> np.ndarray:
        picture = np.full((60, 120, 3), 40, np.uint8)
        picture[8:24, 10 + 3 * k : 18 + 3 * k] = 220  # walking east on the far side
        picture[34:50, 100 - 3 * k : 108 - 3 * k] = 180  # walking west on the near side: they pass at k = 15
        return picture

    empty = [Frame(index=k, time_s=k / 10, image=np.full((60, 120, 3), 40, np.uint8), scale=1.0,
                   source_size=(120, 60)) for k in range(12)]  # fmt: skip
    model = MotionModel().fit_background(empty)

    def tracked() -> list[list[int]]:
        follower = ObjectFollower(model, 10.0, [Movement()])
        ids = [follower.step(Frame(index=k, time_s=k / 10, image=image(k), scale=1.0, source_size=(120, 60)))
               .track_ids for k in range(30)]  # fmt: skip
        return ids, follower.tracks()

    (ids, tracks), (again, _) = tracked(), tracked()
    assert again == ids  # ByteTrack's ids are global to the process: ours start from 0 in every video
    # ByteTrack names a track from its second frame: the track of its first frame is kept, and each walker keeps one
    assert len({tuple(sorted(i)) for i in ids}) == 1 and sorted(ids[0]) == [0, 1] and len(tracks) == 2
    east, west = sorted(ids[1], key=lambda t: tracks[t].boxes[0][0])
    assert [len(t.frames) for t in tracks] == [30, 30]
    assert tracks[east].boxes[-1][0] > tracks[east].boxes[0][0] and tracks[west].boxes[-1][0] < tracks[west].boxes[0][0]


def test_an_audit_of_part_of_a_video_keeps_the_videos_own_times(walkway, learned, tmp_path):
    """``VIDEO@START-END``: the audit screens that part, and its report's frames and times are the whole video's
    (the events the whole video's audit finds there, not shifted to start at 0)."""
    _, test = walkway
    whole = audit(test.video, learned, out=tmp_path / "whole", explainer="deterministic", progress=False)
    event = max(whole.events, key=lambda e: e.start_frame)
    fps = whole.report.fps
    first = max(0, event.start_frame - round(2 * fps))
    spec = f"{test.video}@{first / fps:g}-{(event.end_frame + 1) / fps:g}"
    part = audit(spec, learned, out=tmp_path / "part", explainer="deterministic", progress=False)
    assert part.report.input == spec and part.report.frame_indices[0] == first
    assert part.report.frame_indices[-1] == event.end_frame
    assert part.events and all(first <= e.start_frame and e.end_frame <= event.end_frame for e in part.events)
    last = part.events[-1]
    assert last.start_s == pytest.approx(last.start_frame / fps) and last.peak_frame >= event.start_frame


def test_chat_reuses_the_screening_an_audit_of_the_same_footage_kept(walkway, learned, tmp_path, monkeypatch):
    import sys

    from anomalens.store import EventStore

    chat = sys.modules["anomalens.pipelines.chat"]  # the module (the package's ``chat`` is the function)

    _, test = walkway
    store = EventStore(tmp_path / "store")
    audited = audit(test.video, learned, out=tmp_path / "report", explainer="deterministic", store=store,
                    progress=False)  # fmt: skip

    def screened_again(*args, **kwargs):
        raise AssertionError("the video was screened again")

    monkeypatch.setattr(chat, "screen_video", screened_again)
    index = chat.video_index(test.video, scene_dir=learned, cache_dir=tmp_path / "chat", store=store, progress=False)
    assert index.events == audited.events and index.every_track
    assert {ev.frame_index for ev in index.evidence} == set(audited.report.frame_indices)  # every frame, as chat needs
    with pytest.raises(AssertionError, match="screened again"):  # other footage: nothing to reuse
        chat.video_index(f"{test.video}@1-3", scene_dir=learned, cache_dir=tmp_path / "chat", store=store,
                         progress=False)  # fmt: skip


def test_chat_indexes_a_part_of_a_video_on_its_own(walkway, learned, tmp_path):
    """``chat VIDEO@START-END``: the index holds that part (the video's own frame numbers), cached apart from the
    whole video's."""
    from anomalens.pipelines.chat import video_index

    _, test = walkway
    part = video_index(f"{test.video}@2-4", scene_dir=learned, cache_dir=tmp_path, progress=False)
    fps = part.fps
    frames = [ev.frame_index for ev in part.evidence]
    assert frames and min(frames) == round(2 * fps) and max(frames) == round(4 * fps) - 1
    assert part.frames == round(4 * fps) and part.video == f"{test.video}@2-4"
    whole = video_index(test.video, scene_dir=learned, cache_dir=tmp_path, progress=False)
    assert min(ev.frame_index for ev in whole.evidence) == 0 and len(list(tmp_path.glob("index-*.json"))) == 2
