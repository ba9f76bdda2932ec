"""Shared fixtures: the benchmark data folder and small synthetic scenes (helpers that are not fixtures live in
tests/helpers/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.agent import INJECTION
from tests.helpers.environment import REPO, absent, stored_model


@pytest.fixture(scope="session", autouse=True)
def motion_only_scenes():
    """Scenes learned in tests know motion alone unless a test asks for objects: the synthetic scenes are painted
    shapes, in which the COCO detector sees kites. Object naming is tested on real footage (test_objects.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALENS_OBJECTS", "false")
        yield


@pytest.fixture(scope="session", autouse=True)
def private_event_store(tmp_path_factory):
    """Audits in tests land in an event store of the test run, never in the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANOMALENS_STORE_DIR", str(tmp_path_factory.mktemp("event-store")))
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$ANOMALENS_DATA_DIR``); skipped when absent, a failure under ``CI=true``."""
    path = Path(os.environ.get("ANOMALENS_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (path / "README.md").is_file():
        absent(
            f"benchmark data not found at {path} (set ANOMALENS_DATA_DIR)",
            in_ci="; CI must have ../shared/data beside the checkout",
        )
    return path


@pytest.fixture(scope="session")
def walkway_normal(tmp_path_factory):
    """The walkway's normal clip (240 frames), written once for every scene learned from it."""
    from anomalens.eval.synthetic import SceneSpec, write_scene

    return write_scene(SceneSpec(n_frames=240, seed=11, camera_seed=5), tmp_path_factory.mktemp("walkway") / "normal")


@pytest.fixture(scope="session")
def walkway(walkway_normal, tmp_path_factory):
    """A normal clip and a test clip with one of every anomaly kind, of the same place."""
    from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene

    root = tmp_path_factory.mktemp("walkway")
    normal = walkway_normal
    anomalies = (
        Anomaly("cyclist", 10),
        Anomaly("lawn_crossing", 70),
        Anomaly("wrong_way", 200),
        Anomaly("loitering", 300),
        Anomaly("crowd", 480),
        Anomaly("left_object", 560),
    )
    test = write_scene(SceneSpec(n_frames=800, seed=12, camera_seed=5, anomalies=anomalies), root / "test")
    return normal, test


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """backend -> folder of a tiny random checkpoint for it (``tools.tiny``), built once per run; skips a
    backend whose extra is not installed."""
    from anomalens import registry

    built = {}

    def get(backend: str) -> Path:
        if registry.get(backend).missing():
            pytest.skip(f"{backend} is not installed: pip install 'anomalens[{registry.get(backend).extra}]'")
        if backend not in built:
            from anomalens.tools import tiny

            built[backend] = tiny.build(backend, tmp_path_factory.mktemp(backend.replace(":", "-")) / "model")
        return built[backend]

    return get


@pytest.fixture(scope="session")
def tiny_perception(tiny_weights):
    """Every foundation tool, loaded by its real loader from tiny random weights."""
    from anomalens import registry
    from anomalens.tools.clip import ClipScorer
    from anomalens.tools.perception import Perception

    def load(backend: str):
        return registry.load(backend).load(tiny_weights(backend))

    return Perception(
        clip=ClipScorer(load("clip:transformers")),
        detector=load("detector:grounding-dino"),
        segmenter=load("segmenter:sam"),
        captioner=load("captioner:transformers"),
    )


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The smallest real GGUF chat model (SmolLM2-135M-Instruct, Q4_1)."""
    return stored_model("smollm2-135m")


@pytest.fixture(scope="session")
def scene_and_video(walkway_normal, tmp_path_factory):
    """A walkway learned from a normal clip; a clip with a cyclist and a lawn crossing, with replayed captions."""
    from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene
    from anomalens.pipelines import learn_scene

    root = tmp_path_factory.mktemp("agent")
    normal = walkway_normal
    test = write_scene(
        SceneSpec(
            n_frames=300, seed=12, camera_seed=5, anomalies=(Anomaly("cyclist", 10), Anomaly("lawn_crossing", 150))
        ),
        root / "test",
    )
    scene = learn_scene([normal.video], progress=False)
    # Replayed captions: a bicycle while the cyclist rides, and an injection at every frame after 100.
    lines = [
        "A person riding a bicycle fast along the walkway."
        if k < 70
        else f"People walking on a path. {INJECTION}"
        if k > 100
        else "People walking on a path."
        for k in range(300)
    ]
    captions = root / "captions.txt"
    captions.write_text("\n".join(lines) + "\n")
    return scene, test, captions


@pytest.fixture(scope="session")
def audited_walkway(scene_and_video, tmp_path_factory):
    """The walkway clip audited once by the (scripted) agent: a folder holding its scene (``scene/``) and report
    (``out/``), and the audit. Tests that change them take a copy (``tests.helpers.store.stored_copy``)."""
    from anomalens.agents.llm.scripted import ScriptedLLM
    from anomalens.pipelines import audit
    from anomalens.store import EventStore
    from tests.helpers.agent import by_handle

    scene, test, _ = scene_and_video
    root = tmp_path_factory.mktemp("audited")
    folder = scene.save(root / "scene")
    result = audit(test.video, folder, out=root / "out", llm=ScriptedLLM([by_handle] * 10),
                   store=EventStore(root / "store"), progress=False)  # fmt: skip
    return root, result


@pytest.fixture(scope="session")
def index(scene_and_video):
    """The chat index of that clip (every frame's evidence, its captions)."""
    from anomalens.agents.index import VideoIndex
    from anomalens.pipelines.audit import screen_video

    scene, test, captions = scene_and_video
    screened = screen_video(scene.open(test.video), scene, progress=False)
    built = VideoIndex.from_screening(screened, scene.rulebook, captions=captions, every_frame=True)
    assert len(built.events) >= 2, "the scene should give a cyclist event and a lawn event"
    return built
