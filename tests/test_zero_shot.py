"""Zero- and few-shot image inspection: the embedded patch-novelty detector, the foundation-tool methods with
tiny random models, the `explain` command and the magnetic-tile runner."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from anomalens.agents.image_claims import explained
from anomalens.cli import app
from anomalens.errors import AnomalensError, MediaError
from anomalens.eval.magnetic_tile import run_magnetic_tile
from anomalens.report import load_report
from anomalens.tools.inspect import MAX_BOX_FRACTION, ImageInspector, regions
from anomalens.tools.patch_novelty import PatchNovelty
from anomalens.tools.perception import Perception

BLOB = (110, 40)  # x, y of the injected defect


def tile(seed: int, blob: bool = False) -> np.ndarray:
    """A brushed-metal-like texture (vertical streaks and noise); ``blob`` adds a dark round pit."""
    rng = np.random.default_rng(seed)
    streaks = np.tile(rng.normal(0, 12, 160), (120, 1))
    image = np.clip(128 + cv2.GaussianBlur(streaks, (0, 0), 1.5) + rng.normal(0, 6, (120, 160)), 0, 255)
    if blob:
        cv2.circle(image, BLOB, 6, 40, -1)
    return cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_GRAY2BGR)


def test_zero_shot_patch_novelty_finds_the_pit_in_its_own_image():
    novelty = PatchNovelty()
    pitted, clean = novelty.score(tile(1, blob=True)), novelty.score(tile(1))
    y, x = np.unravel_index(pitted.anomaly_map.argmax(), pitted.anomaly_map.shape)
    assert abs(x - BLOB[0]) <= 8 and abs(y - BLOB[1]) <= 8
    assert pitted.anomaly_map.shape == (120, 160)
    assert pitted.score > 1.0 > clean.score * 0.5 and pitted.score > 2 * clean.score
    with pytest.raises(MediaError, match="at least 16x16"):
        novelty.score(np.zeros((8, 8, 3), np.uint8), "tiny.png")


def test_few_shot_patch_novelty_against_normal_tiles():
    novelty = PatchNovelty().fit([tile(s) for s in (10, 11, 12)])
    assert novelty.few_shot
    pitted, clean = novelty.score(tile(20, blob=True)), novelty.score(tile(21))
    assert pitted.score >= 1.0 > clean.score
    box, _, _ = regions(pitted.anomaly_map, 1.0)[0]
    assert box[0] <= BLOB[0] <= box[2] and box[1] <= BLOB[1] <= box[3]
    assert pitted.deviations(*BLOB)["darkest point"] < 0  # the pit is darker than any normal cell


def test_explain_command_on_images_zero_and_few_shot(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALENS_MODEL_DIR", str(tmp_path / "empty-store"))  # no weights: the embedded detector
    paths = []
    for name, image in (("pitted.png", tile(30, blob=True)), ("clean.png", tile(31))):
        cv2.imwrite(str(tmp_path / name), image)
        paths.append(str(tmp_path / name))
    normals = []
    for seed in (40, 41):
        cv2.imwrite(str(tmp_path / f"normal{seed}.png"), tile(seed))
        normals += ["--normal", str(tmp_path / f"normal{seed}.png")]
    runner = CliRunner()
    for extra in ([], normals):
        out = tmp_path / ("few" if extra else "zero")
        result = runner.invoke(app, ["explain", *paths, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        assert report["method"] == "patch-novelty" and len(report["normal"]) == (2 if extra else 0)
        verdicts = {f["image"].rsplit("/", 1)[-1]: f for f in report["findings"]}
        assert verdicts["pitted.png"]["anomalous"] and verdicts["pitted.png"]["explanation"]
        assert verdicts["pitted.png"]["score"] > verdicts["clean.png"]["score"]
        assert report["mode"] == ("few-shot against 2 normal image(s)" if extra else "zero-shot")
        # Only the tools image inspection uses are looked for.
        assert set(report["absent_tools"]) == {"clip", "detector", "segmenter", "embedder"}
        pit_claims = verdicts["pitted.png"]["claims"]
        assert pit_claims and all(c["verdict"]["status"] == "supported" for c in pit_claims)
        assert verdicts["pitted.png"]["explanation"] == [c["text"] for c in pit_claims]
        html = (out / "report.html").read_text()
        assert html.count("<img") == 2 and "pitted.png" in html
        assert f"{len(pit_claims)} of {len(pit_claims)} claims verified and said" in html
        assert "pitted.png: ANOMALOUS" in result.output
    # A report written before image findings had claims still loads.
    older = json.loads((tmp_path / "few" / "report.json").read_text())
    older.pop("mode")
    for finding in older["findings"]:
        for field in ("unit", "compared_with", "claims"):
            finding.pop(field)
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert [f.unit for f in load_report(tmp_path / "older.json").findings] == ["", ""]
    mixed = runner.invoke(app, ["explain", paths[0], str(tmp_path), "--out", str(tmp_path / "x")])
    assert mixed.exit_code != 0 and isinstance(mixed.exception, AnomalensError)


@pytest.fixture(scope="module")
def patch_tools() -> Perception:
    from anomalens.tools.perception import image_tools
    from tests.helpers.environment import stored_model

    stored_model("mobilenetv2")
    return image_tools()


def test_few_shot_patch_features_find_the_pit_and_name_the_nearest_normal_shot(patch_tools):
    inspector = ImageInspector(patch_tools, shots=3, explain=explained)
    inspector.fit_arrays([tile(s) for s in (10, 11, 12)], ["a.png", "b.png", "c.png"])
    assert inspector.method == "patch-knn"
    pitted, clean = inspector.inspect_array(tile(20, blob=True)), inspector.inspect_array(tile(21))
    assert pitted.anomalous and pitted.score > 1.5 * clean.score, (pitted.score, clean.score)
    y, x = np.unravel_index(pitted.evidence.anomaly_map.argmax(), pitted.evidence.anomaly_map.shape)
    assert abs(x - BLOB[0]) <= 8 and abs(y - BLOB[1]) <= 8
    box = pitted.evidence.boxes[0]
    assert box[0] <= BLOB[0] <= box[2] and box[1] <= BLOB[1] <= box[3]
    assert pitted.evidence.source.backend == "mobilenetv2, few-shot"
    # Region 1's claims: where, how large, how far beyond normal, which normal shot is nearest; all re-measured.
    first = {c.id: c for c in pitted.claims if c.track_id == 1}
    assert set(first) == {"r1-where", "r1-area", "r1-peak", "r1-look"}
    assert all(c.verdict.status == "supported" for c in pitted.claims), [c.verdict for c in pitted.claims]
    assert first["r1-where"].zone.endswith(" right")  # the pit at (110, 40) of a 160x120 tile
    assert first["r1-peak"].value == pytest.approx(pitted.score)
    assert re.fullmatch(r"is closest to a patch of the normal image [abc]\.png", first["r1-look"].term)
    assert pitted.explanation[:4] == [c.text for c in first.values()]
    assert pitted.explanation[0] == f"Region 1 lies in the {first['r1-where'].zone} of the image."
    assert pitted.explanation[2].startswith("Region 1 peaks at ") and "compared with the 3 normal images" in \
        pitted.explanation[2]


def test_image_claims_that_the_map_does_not_bear_out_are_refuted(patch_tools):
    from anomalens.agents.image_claims import verify

    inspector = ImageInspector(patch_tools, shots=2, explain=explained).fit_arrays([tile(10), tile(11)])
    pitted = inspector.inspect_array(tile(20, blob=True))
    claims = {c.id: c for c in pitted.claims}
    wrong = [
        claims["r1-where"].model_copy(update={"zone": "bottom left"}),
        claims["r1-area"].model_copy(update={"value": claims["r1-area"].value * 3}),
        claims["r1-peak"].model_copy(update={"value": claims["r1-peak"].value / 2}),
        claims["r1-peak"].model_copy(update={"track_id": 9}),
    ]
    verdicts = [verify(claim, pitted.evidence, pitted.threshold) for claim in wrong]
    assert [v.status for v in verdicts] == ["unsupported"] * 4, verdicts
    assert verdicts[-1].reason == "there is no region 9"


def test_batched_zero_shot_scores_each_image_against_the_others(patch_tools, tmp_path):
    paths = []
    for seed in range(6):
        paths.append(tmp_path / f"clean{seed}.png")
        cv2.imwrite(str(paths[-1]), tile(90 + seed))
    paths.append(tmp_path / "pitted.png")
    cv2.imwrite(str(paths[-1]), tile(99, blob=True))
    inspector = ImageInspector(patch_tools, images=len(paths))
    findings = inspector.inspect_all(paths, progress=False)
    assert inspector.method == "patch-knn" and findings[-1].evidence.source.backend == "mobilenetv2, batched zero-shot"
    scores = [f.score for f in findings]
    assert findings[-1].anomalous and scores[-1] > 1.5 * max(scores[:-1]), scores
    assert findings[-1].compared_with == "the other images of the batch" and not findings[-1].explanation
    # Two images cannot vouch for each other: the embedded detector looks at each on its own.
    assert ImageInspector(patch_tools, images=2).method == "patch-novelty"
    with pytest.raises(ValueError, match="a batch of images"):
        inspector.inspect_array(tile(1))


def test_a_batch_raises_the_few_shot_threshold_when_the_normal_shots_miss_its_lighting(patch_tools, tmp_path):
    from anomalens.tools.patch_knn import PatchMap, relative_to_batch

    flat = [PatchMap(np.full((4, 4), v), v) for v in (1.0, 1.1, 0.9, 1.05, 0.95, 5.0)]
    scaled, level = relative_to_batch(flat, floor=0.0)
    assert 1.1 < level < 1.5 and [m.score >= 1.0 for m in scaled] == [False] * 5 + [True]
    assert relative_to_batch(flat, floor=3.0)[1] == 3.0 and scaled[-1].anomaly_map.max() == 5.0 / level

    def dim(image: np.ndarray) -> np.ndarray:  # another lighting than the normal shots'
        return cv2.convertScaleAbs(image, alpha=0.6, beta=30)

    paths = []
    for seed in range(12):
        paths.append(tmp_path / f"clean{seed}.png")
        cv2.imwrite(str(paths[-1]), dim(tile(60 + seed)))
    paths.append(tmp_path / "pitted.png")
    cv2.imwrite(str(paths[-1]), dim(tile(79, blob=True)))
    inspector = ImageInspector(patch_tools, images=len(paths), shots=2).fit_arrays([tile(10), tile(11)])
    assert inspector.mode == "few-shot against 2 normal image(s); threshold: the normal images' extreme"
    assert inspector.inspect(paths[0]).anomalous  # one at a time, the dim lighting is beyond the normal shots
    findings = inspector.inspect_all(paths, progress=False)
    assert [f.anomalous for f in findings] == [False] * 12 + [True], [f.score for f in findings]
    assert inspector.mode.endswith("threshold: where a score stands out from the 13 images inspected together")


def test_saa_and_winclip_methods_with_tiny_models(tiny_perception):
    image = tile(50, blob=True)
    saa = ImageInspector(tiny_perception)
    assert saa.method == "saa"
    saa.box_threshold = 0.0  # random weights score low: keep every box so the filter and masks are exercised
    finding = saa._saa(image)[0]
    area = (finding.boxes[:, 2] - finding.boxes[:, 0]) * (finding.boxes[:, 3] - finding.boxes[:, 1])
    assert (area <= MAX_BOX_FRACTION * 160 * 120 + 1e-6).all()
    assert finding.masks.shape == (len(finding), 120, 160)
    union = finding.masks.any(axis=0)
    assert (finding.anomaly_map[~union] == 0).all()
    if len(finding):
        assert finding.frame_score == pytest.approx(finding.scores.max())

    clip_only = Perception(clip=tiny_perception.clip)
    zero = ImageInspector(clip_only).inspect_array(image)
    few = ImageInspector(clip_only).fit_arrays([tile(60), tile(61)]).inspect_array(image)
    assert zero.method == few.method == "winclip"
    for finding in (zero, few):
        assert 0 <= finding.evidence.anomaly_map.min() <= finding.evidence.anomaly_map.max() <= 1
    assert few.score != zero.score  # the normal windows took part
    with pytest.raises(ValueError, match="not saa"):
        ImageInspector(tiny_perception).fit_arrays([tile(60)])


def _tile_dataset(root):
    for folder in ("Free", "Blowhole"):
        (root / folder).mkdir(parents=True)
    for k in range(6):
        cv2.imwrite(str(root / "Free" / f"f{k}.jpg"), tile(70 + k))
        cv2.imwrite(str(root / "Free" / f"f{k}_mask.png"), np.zeros((120, 160), np.uint8))
    for k in range(3):
        cv2.imwrite(str(root / "Blowhole" / f"b{k}.jpg"), tile(80 + k, blob=True))
        mask = np.zeros((120, 160), np.uint8)
        cv2.circle(mask, BLOB, 6, 255, -1)
        cv2.imwrite(str(root / "Blowhole" / f"b{k}_mask.png"), mask)


def test_magnetic_tile_runner_on_a_synthetic_layout(tmp_path):
    _tile_dataset(tmp_path)
    metrics = run_magnetic_tile(tmp_path, shots=2, progress=False)
    assert metrics["images"] == 7 and metrics["anomalous_images"] == 3  # the 2 references are not tested
    assert metrics["method"] == "patch-novelty" and metrics["shots"] == 2
    assert metrics["image_auroc"] == pytest.approx(metrics["image_auroc_per_class"]["Blowhole"])
    assert metrics["image_auroc"] >= 0.9 and metrics["pixel_auroc"] >= 0.9
    assert metrics["claims"] >= 3 * 4 and metrics["claims_supported"] == 1.0  # four claims per pit, re-measured
    assert metrics["called_anomalous_defective"] == 1.0 > metrics["called_anomalous_normal"]
    (tmp_path / "Blowhole" / "b0_mask.png").unlink()
    with pytest.raises(AnomalensError, match="b0.jpg: its mask b0_mask.png is missing"):
        run_magnetic_tile(tmp_path, progress=False)


@pytest.mark.data
def test_magnetic_tile_runner_on_the_real_tiles(shared_data):
    metrics = run_magnetic_tile(shared_data / "magnetic_tile", shots=3, limit=6, progress=False)
    assert metrics["images"] == 24 and metrics["anomalous_images"] == 18
    assert set(metrics["image_auroc_per_class"]) == {"Blowhole", "Break", "Crack"}
    assert 0 <= metrics["pixel_auroc"] <= 1


@pytest.mark.data
def test_on_the_real_tiles_patch_features_beat_the_embedded_detector(shared_data, patch_tools):
    tiles = shared_data / "magnetic_tile"
    embedded = run_magnetic_tile(tiles, shots=4, limit=10, progress=False)
    pretrained = run_magnetic_tile(tiles, shots=4, perception=patch_tools, limit=10, progress=False)
    assert (embedded["method"], pretrained["method"]) == ("patch-novelty", "patch-knn")
    assert pretrained["image_auroc"] > embedded["image_auroc"] + 0.1, (pretrained, embedded)
    assert pretrained["pixel_auroc"] > embedded["pixel_auroc"], (pretrained, embedded)


def test_explain_video_learns_normality_from_the_footage_itself(tmp_path):
    from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene

    clip = write_scene(
        SceneSpec(
            n_frames=600, seed=21, camera_seed=3, anomalies=(Anomaly("cyclist", 40), Anomaly("left_object", 400))
        ),
        tmp_path / "clip",
    )
    result = CliRunner().invoke(
        app, ["explain", str(clip.video), "--out", str(tmp_path / "out"), "--explainer", "deterministic"]
    )
    assert result.exit_code == 0, result.output
    assert "self-referenced" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    truth = json.loads(clip.events.read_text())
    for kind in ("cyclist", "left_object"):
        expected = next(g for g in truth if g["kind"] == kind)
        assert any(
            e["start_frame"] <= expected["end_frame"] and expected["start_frame"] <= e["end_frame"]
            for e in report["events"]
        ), f"no event overlaps the {kind} at frames {expected['start_frame']}-{expected['end_frame']}"
    assert (tmp_path / "out" / "scene" / "rules.yaml").is_file()
