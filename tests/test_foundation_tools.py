"""Foundation-model tools with tiny random checkpoints: the real loaders, processors and post-processing.

Outputs of random weights are noise, so each test checks what the code guarantees whatever the weights:
coordinates against the model's raw outputs converted independently, shapes at frame resolution, caching,
prompt bookkeeping, and agreement with the underlying library called directly.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from anomalens import registry, weights  # noqa: E402
from anomalens.errors import MediaError, MissingExtra, WeightsNotFound  # noqa: E402
from anomalens.tools import tiny  # noqa: E402
from anomalens.tools.clip import ClipScorer, windows  # noqa: E402
from anomalens.tools.detector import prompt_of  # noqa: E402
from tests.helpers.network import Handler, serve  # noqa: E402

FRAME = (np.random.default_rng(3).random((48, 64, 3)) * 255).astype(np.uint8)  # not square, on purpose
OTHER = (np.random.default_rng(4).random((48, 64, 3)) * 255).astype(np.uint8)


def load(backend, tiny_weights):
    return registry.load(backend).load(tiny_weights(backend))


# --- weights registry -----------------------------------------------------------------------------------


def test_weights_resolve_explicit_store_and_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    entry = weights.checkpoints()["owlv2-base"]
    store, cache = tmp_path / "store", tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    with pytest.raises(WeightsNotFound) as absent:
        weights.resolve(None, "detector:owlv2", root=store)
    message = str(absent.value)
    for needed in ("owlv2-base", str(store / "owlv2-base"), str(cache), entry.repo, entry.revision, "anomalens models pull owlv2-base"):
        assert needed in message

    # The Hugging Face cache layout at the pinned revision is found offline.
    snapshot = cache / f"models--{entry.repo.replace('/', '--')}" / "snapshots" / entry.revision
    snapshot.mkdir(parents=True)
    for name in entry.files:
        (snapshot / name).write_text("{}")
    assert weights.resolve(None, "detector:owlv2", root=store) == snapshot
    assert weights.where("owlv2-base", store) == ("hf-cache", snapshot)

    # An incomplete copy in the store is passed over; a complete one wins over the cache.
    stored = store / "owlv2-base"
    stored.mkdir(parents=True)
    (stored / entry.files[0]).write_text("{}")
    assert weights.resolve("owlv2-base", "detector:owlv2", root=store) == snapshot
    for name in entry.files:
        (stored / name).write_text("{}")
    assert weights.resolve("owlv2-base", "detector:owlv2", root=store) == stored
    assert weights.resolve(tmp_path, "detector:owlv2", root=store) == tmp_path

    with pytest.raises(WeightsNotFound, match="is for detector:owlv2, not segmenter:sam"):
        weights.resolve("owlv2-base", "segmenter:sam", root=store)
    with pytest.raises(WeightsNotFound, match="no-such/model: no such file or folder"):
        weights.resolve("no-such/model", "detector:owlv2", root=store)


def test_missing_extra_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    with pytest.raises(MissingExtra, match=r"anomalens\[clip\]"):
        registry.load("clip:open_clip")


# --- CLIP ---------------------------------------------------------------------------------------------


def test_windows_cover_the_frame_flush_to_its_edges():
    boxes = windows((64, 48))
    covered = np.zeros((48, 64), bool)
    for x1, y1, x2, y2 in boxes.astype(int):
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert boxes[:, 2].max() == 64 and boxes[:, 3].max() == 48
    assert set(np.round(boxes[:, 2] - boxes[:, 0])) == {24, 16}  # half and a third of the shorter side


@pytest.mark.parametrize("backend", ["clip:transformers", "clip:open_clip"])
def test_clip_scores_map_and_retrieval(backend, tiny_weights):
    encoder = load(backend, tiny_weights)
    scorer = ClipScorer(encoder)

    evidence = scorer.score(FRAME, subject="tile", frame_index=2)
    assert evidence.anomaly_map.shape == (48, 64) and evidence.frame_size == (64, 48)
    assert 0 <= evidence.anomaly_map.min() <= evidence.anomaly_map.max() <= 1
    # The top-left pixel lies in exactly one window per scale: its value is their mean, computed here directly.
    corner = [FRAME[: int(y2), : int(x2)] for x1, y1, x2, y2 in windows((64, 48)) if x1 == 0 and y1 == 0]
    direct = scorer.anomaly_probability(encoder.encode_images(corner), "tile").mean()
    assert evidence.anomaly_map[0, 0] == pytest.approx(direct, abs=1e-3)
    whole = scorer.anomaly_probability(encoder.encode_images([FRAME]), "tile")[0]
    assert evidence.frame_score == pytest.approx((whole + evidence.anomaly_map.max()) / 2, abs=1e-3)

    texts = ["a truck", "a person walking", "an empty road"]
    boxes = np.array([[0, 0, 20, 20], [10, 5, 70, 40]])  # the second runs past the frame: clipped
    scored = scorer.text_scores(FRAME, texts, boxes=boxes)
    assert scored.boxes[1].tolist() == [10, 5, 64, 40]
    similarity = np.array([[m.value for m in scored.measurements if m.object_index == i] for i in range(2)])
    crop = FRAME[5:40, 10:64]
    expected = encoder.encode_images([crop])[0] @ encoder.encode_texts(texts).T
    np.testing.assert_allclose(similarity[1], expected, atol=1e-4)
    assert scored.labels == scored.class_names == [texts[k] for k in similarity.argmax(axis=1)]
    assert scored.similarities(1) == pytest.approx(dict(zip(texts, similarity[1])))
    assert (scored.scores > 1 / len(texts) - 1e-9).all()
    with pytest.raises(MediaError, match="uint8 BGR"):
        scorer.score(FRAME.astype(np.float32))

    frames = [FRAME, OTHER, FRAME[::-1].copy()]
    index = scorer.index(frames, [10, 20, 30])
    hits = index.search("a truck", top_k=2)
    direct = encoder.encode_images(frames) @ encoder.encode_texts(["a truck"])[0]
    assert [k for k, _ in hits] == [[10, 20, 30][j] for j in np.argsort(-direct)[:2]]
    assert hits[0][1] == pytest.approx(direct.max(), abs=1e-4)


def test_siglip_loads_through_the_clip_backend_with_max_length_padding(tmp_path):
    from anomalens.tools.clip import TransformersClip

    encoder = TransformersClip.load(tiny.clip_siglip(tmp_path / "siglip"))
    assert encoder._siglip and type(encoder.model).__name__ == "SiglipModel"
    # SigLIP pads every text to the same length, so a text's embedding does not depend on its batch.
    alone = encoder.encode_texts(["a cat"])[0]
    together = encoder.encode_texts(["a cat", "a much longer text about several dogs"])[0]
    np.testing.assert_allclose(alone, together, atol=1e-5)
    evidence = ClipScorer(encoder).score(FRAME)
    assert evidence.anomaly_map.shape == (48, 64) and 0 <= evidence.frame_score <= 1


def test_open_clip_encoder_matches_open_clip_directly(tiny_weights):
    import open_clip
    from PIL import Image

    encoder = load("clip:open_clip", tiny_weights)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_weights('clip:open_clip')}")
    with torch.inference_mode():
        direct = model.eval().encode_image(preprocess(Image.fromarray(FRAME[:, :, ::-1].copy()))[None]).numpy()[0]
    np.testing.assert_allclose(encoder.encode_images([FRAME])[0], direct / np.linalg.norm(direct), atol=1e-5)


# --- detectors ------------------------------------------------------------------------------------------


def test_prompt_of_maps_detected_phrases_to_prompts():
    prompts = ["red car", "person with a bag"]
    assert prompt_of("car", prompts) == "red car"
    assert prompt_of("person bag", prompts) == "person with a bag"
    assert prompt_of("tree", prompts) == "tree"


def _cxcywh_to_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    cx, cy, w, h = boxes.T
    return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)


@pytest.mark.parametrize("backend", ["detector:grounding-dino", "detector:owlv2"])
def test_detector_boxes_are_frame_pixels(backend, tiny_weights):
    detector = load(backend, tiny_weights)
    prompts = ["a car", "a person"]
    evidence = detector.detect(FRAME, prompts, box_threshold=0.0, text_threshold=0.0, frame_index=5)
    assert len(evidence) > 0 and evidence.frame_index == 5
    assert set(evidence.labels) <= set(prompts)
    assert (evidence.boxes[:, [0, 2]] <= 64).all() and (evidence.boxes[:, [1, 3]] <= 48).all()

    # The best box, converted here from the model's raw normalised output.
    inputs = detector._inputs(FRAME[:, :, ::-1].copy(), prompts)
    with torch.inference_mode():
        raw = detector.model(**inputs)
    logits = raw.logits[0].sigmoid().max(-1).values.numpy()
    best = int(logits.argmax())
    # OWLv2 pads the frame to a square (64x64) before resizing; Grounding DINO resizes the frame itself.
    width, height = (64, 64) if backend == "detector:owlv2" else (64, 48)
    expected = _cxcywh_to_xyxy(raw.pred_boxes[0].numpy()[best : best + 1], width, height)[0]
    expected = np.clip(expected, 0, [64, 48, 64, 48])
    top = int(evidence.scores.argmax())
    np.testing.assert_allclose(evidence.boxes[top], expected, atol=1e-3)
    assert evidence.scores[top] == pytest.approx(logits[best], abs=1e-5)

    nothing = detector.detect(FRAME, prompts, box_threshold=1.01, text_threshold=1.01)
    assert len(nothing) == 0 and nothing.labels == []
    with pytest.raises(ValueError, match="non-empty text prompts"):
        detector.detect(FRAME, [" . "])


# --- segmenters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["segmenter:sam", "segmenter:segment-anything"])
def test_segmenter_masks_at_frame_resolution_one_embedding_per_frame(backend, tiny_weights):
    segmenter = load(backend, tiny_weights)
    boxes = np.array([[4.0, 4.0, 30.0, 30.0], [20.0, 10.0, 60.0, 46.0]])
    both = segmenter.segment(FRAME, boxes=boxes, labels=["car", "person"])
    assert both.masks.shape == (2, 48, 64) and both.labels == ["car", "person"]
    first = segmenter.segment(FRAME, boxes=boxes[:1])
    np.testing.assert_array_equal(first.masks[0], both.masks[0])  # prompts on one frame do not interact
    assert segmenter.embeddings_computed == 1
    from_point = segmenter.segment(FRAME, points=np.array([[12.0, 12.0]]))
    assert from_point.masks.shape == (1, 48, 64) and segmenter.embeddings_computed == 1
    if from_point.masks[0].any():
        ys, xs = np.nonzero(from_point.masks[0])
        assert from_point.boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    segmenter.segment(OTHER, boxes=boxes)
    assert segmenter.embeddings_computed == 2
    with pytest.raises(ValueError, match="box or point prompts"):
        segmenter.segment(FRAME)
    with pytest.raises(ValueError, match="one point per box"):
        segmenter.segment(FRAME, boxes=boxes, points=np.array([[1.0, 1.0]]))


# --- captioners -----------------------------------------------------------------------------------------


def test_transformers_captioner_is_deterministic_evidence(tiny_weights):
    captioner = load("captioner:transformers", tiny_weights)
    captioner.fps = 10.0
    one = captioner.caption(FRAME, frame_index=30, max_new_tokens=6)
    two = captioner.caption(FRAME, frame_index=30, max_new_tokens=6)
    # Greedy decoding: the same frame, the same words. Not necessarily any words: the tiny random checkpoint differs
    # between processes (its build depends on the hash seed) and in some it emits the end token first.
    assert one.text == two.text
    assert one.source.tool == "caption" and one.source.backend == "transformers" and one.time_s == 3.0


def test_openai_captioner_sends_the_frame_as_a_vision_message(tmp_path):
    pytest.importorskip("openai")
    import cv2

    from anomalens.config import load_settings
    from anomalens.errors import ConfigError
    from anomalens.tools.captioner import OpenAICaptioner
    from anomalens.tools.perception import Perception

    seen = []

    class VisionServer(Handler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            message = {"role": "assistant", "content": " A  cyclist rides\n on the walkway. "}
            choice = {"index": 0, "finish_reason": "stop", "message": message}
            completion = {"id": "1", "object": "chat.completion", "created": 0, "model": "vlm", "choices": [choice]}
            self.reply(200, json.dumps(completion).encode())

    with serve(VisionServer) as base:
        url = f"{base}/v1"
        captioner = OpenAICaptioner("vlm", base_url=url, fps=5.0)
        smooth = cv2.GaussianBlur(FRAME, (0, 0), 3)  # JPEG keeps a smooth picture close; noise it does not
        evidence = captioner.caption(smooth, frame_index=10)
        # Settings make the server the captioner the agent and `explain` get.
        configured = load_settings(captioner_base_url=url, captioner_model="served-vlm")
        perception = Perception.available(root=tmp_path, settings=configured)
        assert perception.present == ["captioner"] and "captioner" not in perception.absent
        assert perception.captioner.caption(smooth).text == "A cyclist rides on the walkway."
    assert [request["model"] for request in seen] == ["vlm", "served-vlm"]
    with pytest.raises(ConfigError, match="captioner_model"):
        Perception.available(root=tmp_path, settings=load_settings(captioner_base_url=url))
    assert evidence.text == "A cyclist rides on the walkway." and evidence.time_s == 2.0
    parts = seen[0]["messages"][0]["content"]
    image = next(p for p in parts if p["type"] == "image_url")["image_url"]["url"]
    assert image.startswith("data:image/jpeg;base64,")
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(image.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == smooth.shape and np.abs(decoded.astype(int) - smooth).mean() < 4


def test_doctor_tiny_runs_every_installed_backend():
    from typer.testing import CliRunner

    from anomalens.cli import app

    result = CliRunner().invoke(app, ["doctor", "--tiny"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in (b.name for b in registry.backends().values() if b.tiny is not None):
        row = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert (" yes " in row) != bool(registry.get(name).missing()), row
    from anomalens import modelstore

    for backend in (b for b in registry.backends().values() if b.store and not b.missing()):
        row = next(line for line in result.output.splitlines() if f" {backend.name} " in line)
        here = modelstore.present(backend.store)
        assert ("yes (real weights)" in row) == here and ("no weights" in row) != here, row
