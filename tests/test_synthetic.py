import hashlib
import json

import numpy as np
import pytest

from anomalens.eval.synthetic import (
    ANOMALY_KINDS,
    CYCLIST_SPEED,
    LOITER_FRAMES,
    WALK_SPEED,
    Anomaly,
    SceneSpec,
    build_scene,
    load_masks,
    write_scene,
)
from anomalens.video import FrameSource


def digest(scene) -> str:
    h = hashlib.sha1()
    for image, mask in scene.frames():
        h.update(image.tobytes())
        h.update(mask.tobytes())
    return h.hexdigest()


def one(kind, start=5, n=220, seed=3):
    return build_scene(SceneSpec(n_frames=n, seed=seed, anomalies=(Anomaly(kind, start),)))


def test_same_spec_same_pixels_other_seed_other_pixels():
    spec = SceneSpec(n_frames=40, seed=4, anomalies=(Anomaly("cyclist", 3),))
    assert digest(build_scene(spec)) == digest(build_scene(spec))
    assert digest(build_scene(SceneSpec(n_frames=40, seed=5, anomalies=spec.anomalies))) != digest(build_scene(spec))


def test_camera_seed_fixes_the_place_and_seed_the_people():
    a = build_scene(SceneSpec(n_frames=10, seed=1, camera_seed=9))
    b = build_scene(SceneSpec(n_frames=10, seed=2, camera_seed=9))
    c = build_scene(SceneSpec(n_frames=10, seed=1, camera_seed=8))
    assert np.array_equal(a.background, b.background) and not np.array_equal(a.background, c.background)


def test_normal_scene_has_no_anomaly_and_walkers_go_left_to_right_on_the_walkway():
    scene = build_scene(SceneSpec(n_frames=200, seed=2))
    assert scene.labels.sum() == 0 and scene.events == []
    assert not any(mask.any() for _, mask in scene.frames())
    for agent in scene.agents:
        steps = np.diff(agent.xs)
        steps = steps[~np.isnan(steps)]
        if steps.size:
            assert WALK_SPEED[0] - 1e-9 <= steps.mean() <= WALK_SPEED[1] + 1e-9


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_each_anomaly_has_labels_masks_and_an_explained_event(kind):
    scene = one(kind)
    (event,) = scene.events
    assert event.kind == kind and event.why
    labelled = np.flatnonzero(scene.labels)
    assert labelled[0] == event.start_frame and labelled[-1] == event.end_frame
    masked = np.array([mask.any() for _, mask in scene.frames()])
    # a mask can vanish behind another person for a frame; otherwise masks and labels agree
    assert not masked[scene.labels == 0].any()
    assert masked[scene.labels == 1].mean() > 0.9


def test_anomalies_behave_as_their_ground_truth_says():
    def anomalous_agents(scene):
        return [a for a in scene.agents if a.anomalous.any()]

    (cyclist,) = anomalous_agents(one("cyclist"))
    assert np.nanmean(np.diff(cyclist.xs)) == pytest.approx(CYCLIST_SPEED)
    (wrong,) = anomalous_agents(one("wrong_way"))
    assert np.nanmean(np.diff(wrong.xs)) < 0
    (crosser,) = anomalous_agents(one("lawn_crossing"))
    assert np.nanmean(np.diff(crosser.ys)) > 0 and np.nanstd(crosser.xs) < 2
    (loiterer,) = anomalous_agents(one("loitering"))
    still = loiterer.xs[loiterer.anomalous]
    assert loiterer.anomalous.sum() == LOITER_FRAMES and np.ptp(still) <= 3.01
    (bag,) = anomalous_agents(one("left_object"))
    assert bag.kind == "bag" and np.ptp(bag.xs[bag.anomalous]) == 0 and bag.anomalous[-1]
    crowd = anomalous_agents(one("crowd"))
    assert len(crowd) == 12


def test_write_scene_round_trips_video_masks_labels_and_events(tmp_path):
    spec = SceneSpec(n_frames=60, seed=1, anomalies=(Anomaly("lawn_crossing", 10),))
    files = write_scene(spec, tmp_path / "scene")
    frames = list(FrameSource(files.video))
    labels = json.loads(files.labels.read_text())
    masks = load_masks(files.masks)
    events = json.loads(files.events.read_text())
    assert len(frames) == 60 and labels["fps"] == 15.0 and len(labels["labels"]) == 60
    assert masks.shape == (60, 240, 320)
    np.testing.assert_array_equal(masks.any(axis=(1, 2)), np.array(labels["labels"], bool))
    assert events[0]["kind"] == "lawn_crossing"
    pngs = write_scene(spec, tmp_path / "frames", as_frames=True)
    assert len(list(FrameSource(pngs.video))) == 60


def test_invalid_anomalies_are_rejected():
    with pytest.raises(ValueError, match="unknown anomaly kind 'meteor'"):
        SceneSpec(anomalies=(Anomaly("meteor", 3),))
    with pytest.raises(ValueError, match="outside 0..9"):
        SceneSpec(n_frames=10, anomalies=(Anomaly("crowd", 10),))
