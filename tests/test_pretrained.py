"""The pretrained CPU perception: the TFJS runtime (op by op on hand-built graphs, then whole models against
TensorFlow.js's own outputs), the detectors, pose and embedders on real frames with real weights."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.environment import REPO, absent, stored_model

REFERENCE = REPO.parent / "shared" / "reference" / "tfjs"
FRAMES = ("ped2_test01_120", "ped2_test04_105", "ped2_test06_079", "vtest_300")

torch = pytest.importorskip("torch", reason="the pretrained perception runs on torch (pip install 'anomalens[vision]')")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_graph(folder: Path, nodes: list[dict], weights: dict[str, np.ndarray]) -> Path:
    """A TFJS graph model: ``nodes`` plus a Const node and a float32 weight for each of ``weights``."""
    specs, data = [], b""
    for name, value in weights.items():
        value = np.asarray(value)
        dtype = "int32" if value.dtype.kind == "i" else "float32"
        specs.append({"name": name, "shape": list(value.shape), "dtype": dtype})
        data += value.astype(dtype).tobytes()
        nodes = [*nodes, {"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}}]
    model = {
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["graph.bin"], "weights": specs}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "graph.bin").write_bytes(data)
    (folder / "graph.json").write_text(json.dumps(model))
    return folder / "graph.json"


def placeholder(name: str = "x") -> dict:
    return {"name": name, "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}}}


def test_an_unknown_op_is_refused_at_load_by_name(tmp_path):
    from anomalens.tools.tfjs import TfjsGraph, UnsupportedGraph

    nodes = [placeholder(), {"name": "y", "op": "FancyOp", "input": ["x"]}, {"name": "z", "op": "Erf", "input": ["y"]}]
    with pytest.raises(UnsupportedGraph, match=r"graph.json: .* does not implement: Erf, FancyOp"):
        TfjsGraph.load(write_graph(tmp_path, nodes, {}))


def test_convolution_padding_and_layout_match_a_direct_computation(tmp_path):
    """A strided SAME convolution with a bias and ReLU6, on NHWC data: checked against a loop over pixels."""
    from anomalens.tools.tfjs import TfjsGraph

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 7, 6, 3)).astype(np.float32)
    w = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)  # kh, kw, in, out
    b = rng.normal(size=4).astype(np.float32)
    conv = {
        "name": "conv", "op": "_FusedConv2D", "input": ["x", "w", "b"],
        "attr": {"strides": {"list": {"i": ["1", "2", "2", "1"]}}, "padding": {"s": b64("SAME")},
                 "fused_ops": {"list": {"s": [b64("BiasAdd"), b64("Relu6")]}}},
    }  # fmt: skip
    out = TfjsGraph.load(write_graph(tmp_path, [placeholder(), conv], {"w": w, "b": b})).run({"x": x}, ["conv"])["conv"]
    # SAME with stride 2: out = ceil(in / 2); the padding's odd pixel goes after (TensorFlow's convention).
    assert out.shape == (1, 4, 3, 4)
    padded = np.pad(x[0], ((1, 1), (0, 1), (0, 0)))  # rows: total 2 -> 1+1; columns: total 1 -> 0+1
    expected = np.zeros((4, 3, 4), np.float32)
    for i in range(4):
        for j in range(3):
            expected[i, j] = np.einsum("hwc,hwco->o", padded[2 * i : 2 * i + 3, 2 * j : 2 * j + 3], w) + b
    np.testing.assert_allclose(out[0], np.clip(expected, 0, 6), atol=1e-5)


def test_legacy_bilinear_resize_and_strided_slices_follow_tensorflow(tmp_path):
    from anomalens.tools.tfjs import TfjsGraph

    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    nodes = [
        placeholder(),
        {"name": "up", "op": "ResizeBilinear", "input": ["x", "size"],
         "attr": {"align_corners": {"b": False}, "half_pixel_centers": {"b": False}}},
        # x[0, 1:, newaxis, ::2] with a shrunk first axis
        {"name": "cut", "op": "StridedSlice", "input": ["x", "begin", "end", "step"],
         "attr": {"shrink_axis_mask": {"i": "1"}, "new_axis_mask": {"i": "4"}, "end_mask": {"i": "2"}}},
    ]  # fmt: skip
    weights = {"size": np.array([8, 8]), "begin": np.array([0, 1, 0, 0]), "end": np.array([1, 0, 0, 4]),
               "step": np.array([1, 1, 1, 2])}  # fmt: skip
    out = TfjsGraph.load(write_graph(tmp_path, nodes, weights)).run({"x": x}, ["up", "cut"])
    # Without half-pixel centres, output pixel k samples input k/2: even pixels copy, odd ones average neighbours.
    row = out["up"][0, 0, :, 0]
    np.testing.assert_allclose(row, [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])
    assert out["cut"].shape == (3, 1, 2, 1)
    np.testing.assert_array_equal(out["cut"][:, 0, :, 0], x[0, 1:, ::2, 0])


def model_folder(name: str) -> Path:
    return stored_model(name)


def reference() -> np.lib.npyio.NpzFile:
    if not (REFERENCE / "reference_outputs.npz").is_file():
        absent(f"TensorFlow.js reference outputs not found in {REFERENCE}", "; CI needs ../shared beside the checkout")
    return np.load(REFERENCE / "reference_outputs.npz")


def canvas(frame: str, side: int) -> np.ndarray:
    return cv2.imread(str(REFERENCE / "inputs" / f"{frame}_{side}.png"))


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["executor", "onnx"])
def test_the_three_graph_models_reproduce_tensorflow_js(runtime):
    """Raw outputs before any NMS: boxes within 2 px, scores within 0.01, on TensorFlow.js's own inputs; with the
    torch executor, and with the ONNX conversion of it that the backends run."""
    from anomalens.tools.pretrained import CenterNetDetector, MoveNetPose, NanoDetDetector
    from anomalens.tools.tfjs import TfjsGraph

    expected = reference()
    stores = {"centernet": "centernet-mobilenetv3", "nanodet": "nanodet-g", "movenet-multipose": "movenet-multipose"}
    folders = {stem: model_folder(store) for stem, store in stores.items()}
    if runtime == "executor":
        graphs = {stem: TfjsGraph.load(folder / f"{stem}.json") for stem, folder in folders.items()}
        inputs = {"centernet": "tower_0/images", "nanodet": "input_1", "movenet-multipose": "input"}
    else:
        graphs = {
            "centernet": CenterNetDetector.load(folders["centernet"]).graph,
            "nanodet": NanoDetDetector.load(folders["nanodet"]).graph,
            "movenet-multipose": MoveNetPose.load(folders["movenet-multipose"]).graph,
        }
        inputs = dict.fromkeys(graphs, "input")
    outputs = [f"Identity{'' if k == 0 else f'_{k}'}" for k in range(6)]
    mean, std = NanoDetDetector.mean, NanoDetDetector.std
    for frame in FRAMES:
        image = canvas(frame, 512)[None, :, :, ::-1].astype(np.float32)
        found = graphs["centernet"].run({inputs["centernet"]: image}, ["tower_0/detections"])["tower_0/detections"][0]
        truth = expected[f"{frame}/centernet_detections"]
        assert np.abs(found[:, :4] - truth[:, :4]).max() <= 2.0, frame
        assert np.abs(found[:, 4] - truth[:, 4]).max() <= 0.01 and (found[:, 5] == truth[:, 5]).all(), frame

        feed = {inputs["movenet-multipose"]: canvas(frame, 256)[None, :, :, ::-1].astype(np.int32)}
        people = graphs["movenet-multipose"].run(feed, ["Identity"])["Identity"][0]
        truth = expected[f"{frame}/movenet_multipose"]
        positions = np.r_[[c for k in range(17) for c in (3 * k, 3 * k + 1)], 51, 52, 53, 54]
        assert np.abs(people[:, positions] - truth[:, positions]).max() * 256 <= 2.0, frame
        assert np.abs(people[:, 2:51:3] - truth[:, 2:51:3]).max() <= 0.01, frame

        normalised = (canvas(frame, 416).astype(np.float32) - mean) / std
        raw = graphs["nanodet"].run({inputs["nanodet"]: normalised.transpose(2, 0, 1)[None].copy()}, outputs)
        for name in outputs:
            assert np.abs(raw[name] - expected[f"{frame}/nanodet/{name}"]).max() <= 0.01, (frame, name)


def test_a_graph_converted_once_is_kept_and_reused(tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'anomalens[vision]'")
    from anomalens.tools.tfjs import compile_graph

    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    conv = {"name": "conv", "op": "Conv2D", "input": ["x", "w"],
            "attr": {"strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": b64("SAME")}}}  # fmt: skip
    relu = {"name": "out", "op": "Relu", "input": ["conv"]}
    model = write_graph(tmp_path / "net", [placeholder(), conv, relu], {"w": w})
    feed = {"x": rng.normal(size=(1, 9, 9, 2)).astype(np.float32)}
    graph = compile_graph(model, feed, ["out"], tmp_path / "cache")
    (converted,) = (tmp_path / "cache").glob("*.onnx")
    stamp = converted.stat().st_mtime_ns
    other = rng.normal(size=(1, 9, 9, 2)).astype(np.float32)
    from anomalens.tools.tfjs import TfjsGraph

    executed = TfjsGraph.load(model).run({"x": other}, ["out"])["out"]
    np.testing.assert_allclose(graph.run({"input": other}, ["out"])["out"], executed, atol=1e-5)
    compile_graph(model, feed, ["out"], tmp_path / "cache")
    assert converted.stat().st_mtime_ns == stamp  # reused, not converted again
    with pytest.raises(ValueError, match="converted without the outputs conv"):
        graph.run({"input": other}, ["conv"])


def test_letterboxing_reproduces_the_reference_canvases(shared_data):
    from anomalens.tools.vision import letterbox

    for video, number in (("01", 120), ("04", 105)):
        source = cv2.imread(str(shared_data / "ucsd_ped2" / "test" / video / f"{number:03d}.jpg"))
        for side in (256, 416, 512):
            made, scale = letterbox(source, side)
            assert scale == side / 360
            assert np.abs(made.astype(int) - canvas(f"ped2_test{video}_{number:03d}", side)).max() <= 1


# Where the people of frame 300 of vtest.avi stand, read by eye off the 512-pixel canvas (x, y of each
# person's middle): two walking left, two by the barrier, one crossing the path, two on the right.
VTEST_PEOPLE = [(135, 130), (170, 127), (206, 130), (219, 168), (397, 132), (421, 132)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["detector:centernet", "detector:nanodet"])
def test_the_coco_detectors_find_the_people_where_they_are(backend, shared_data):
    from anomalens import registry

    store = registry.get(backend).store
    detector = registry.load(backend).load(model_folder(store))
    street = detector.detect(canvas("vtest_300", 512), ["person"], frame_index=300)
    assert street.kind == "detection" and set(street.class_names) == {"person"}
    for x, y in VTEST_PEOPLE:
        x1, y1, x2, y2 = street.boxes.T
        inside = (x1 <= x) & (x <= x2) & (y1 <= y) & (y <= y2)
        assert inside.any(), f"{backend}: nobody found at {(x, y)} in vtest frame 300"
    assert (street.boxes[:, 3] <= 384).all()  # nothing on the black padding below the frame
    # Ped2 test 01 frame 120 (360x240, source pixels): about twenty people cross the walkway between y 95 and
    # 175 (a band read by eye); every person found stands in it, and there are many.
    walkway = cv2.imread(str(shared_data / "ucsd_ped2" / "test" / "01" / "120.jpg"))
    crowd = detector.detect(walkway, ["person"])
    assert crowd.frame_size == (360, 240) and len(crowd) >= 8
    feet = crowd.boxes[:, 3]
    assert ((feet >= 95) & (feet <= 180)).mean() >= 0.9


@pytest.mark.slow
def test_movenet_finds_the_people_of_a_region_with_keypoints_in_source_pixels():
    """MoveNet was made for people near the camera: on the whole street its scores stay under 0.25 (TensorFlow.js
    agrees, see the reference outputs), on the region around the four walkers on the left they pass 0.4."""
    from anomalens.tools.pretrained import MoveNetPose

    pose = MoveNetPose.load(model_folder("movenet-multipose"))
    left, top = 100, 95
    people = pose.estimate(canvas("vtest_300", 512)[top:215, left:250])
    assert people.kind == "pose" and people.keypoints.shape == (len(people), 17, 3) and len(people) == 4
    for x, y in VTEST_PEOPLE[:4]:
        x1, y1, x2, y2 = people.boxes.T
        assert ((x1 <= x - left) & (x - left <= x2) & (y1 <= y - top) & (y - top <= y2)).any(), (x, y)
    for box, points in zip(people.boxes, people.keypoints):  # confident keypoints lie on their person
        sure = points[points[:, 2] > 0.3]
        assert len(sure) >= 10
        assert ((sure[:, :2] >= box[:2] - 4) & (sure[:, :2] <= box[2:] + 4)).all()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedder:efficientnet-lite0", "embedder:mobilenetv2"])
def test_embeddings_are_stable_under_a_shift_and_tell_a_person_from_the_ground(backend):
    from anomalens import registry

    embedder = registry.load(backend).load(model_folder(registry.get(backend).store))
    frame = canvas("vtest_300", 512)
    person = np.array([[200.0, 138.0, 238.0, 198.0]])  # the walker crossing the path (VTEST_PEOPLE[3])
    shifted = person + [1, 1, 1, 1]
    ground = np.array([[60.0, 210.0, 98.0, 270.0]])  # empty grass of the same size
    found = embedder.embed(frame, np.concatenate([person, shifted, ground]))
    assert found.kind == "appearance" and found.embeddings.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(found.embeddings, axis=1), 1.0, atol=1e-6)
    same, different = found.embeddings[0] @ found.embeddings[1], found.embeddings[0] @ found.embeddings[2]
    assert same > 0.9 and different < same - 0.4, (same, different)


def test_words_name_coco_classes():
    from anomalens.tools.coco import coco, coco_class

    names, _ = coco()
    assert len(names) == 80 and names[:3] == ["person", "bicycle", "car"] and names[-1] == "toothbrush"
    cases = [("a bike", "bicycle"), ("Two Bikes", "bicycle"), ("pedestrians", "person"), ("a red car", "car"),
             ("the scissors", "scissors"), ("a unicorn", None), ("", None)]  # fmt: skip
    for term, expected in cases:
        assert coco_class(term) == expected, term


@pytest.mark.slow
def test_the_real_detector_is_the_agents_and_the_verifiers_when_no_open_vocabulary_one_is_here(shared_data, tmp_path):
    from anomalens.agents.sightings import same_class
    from anomalens.agents.verify import DetectorGrounder
    from anomalens.config import load_settings
    from anomalens.tools.perception import Perception

    model_folder("centernet-mobilenetv3")
    perception = Perception.available(settings=load_settings())
    if perception.detector is None or perception.detector.backend != "centernet":
        pytest.skip("an open-vocabulary detector's weights are here: it is preferred")
    frame = cv2.imread(str(shared_data / "ucsd_ped2" / "test" / "01" / "120.jpg"))
    found = perception.detector.detect(frame, ["people"])
    person = found.boxes[int(np.argmax(found.scores))]
    evidence = found.model_copy(update={"frame_index": 120})
    grounder = DetectorGrounder(perception.detector, lambda k: frame)
    assert grounder.ground("pedestrian", evidence, person.tolist()) is True
    assert grounder.ground("truck", evidence, person.tolist()) is False  # a class it knows, not there
    assert grounder.ground("unicorn", evidence, person.tolist()) is None  # a word it was never taught
    assert same_class("pedestrians", "person") and not same_class("truck", "person")
