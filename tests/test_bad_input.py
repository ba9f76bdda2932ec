"""Bad input, tried as a new user would: each case ends with exit code 2 and one line naming the input and the
problem, no traceback, and nothing written. Cases are built here, in a temporary folder, from the shared
synthetic scene."""

import re
import shutil
import sys

import numpy as np
import pytest

from anomalens.cli import main
from anomalens.report import Report

GARBAGE = bytes(range(128, 256)) * 8  # not UTF-8 from its first byte


def run(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``anomalens ARGV`` in this process, as its console script runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["anomalens", *map(str, argv)])
    try:
        main()
    except SystemExit as ended:
        return ended.code or 0, capsys.readouterr().err
    return 0, capsys.readouterr().err


@pytest.fixture
def inputs(scene_and_video, tmp_path):
    scene, test, captions = scene_and_video
    scene.save(tmp_path / "scene")
    (tmp_path / "garbage.txt").write_bytes(GARBAGE)
    return tmp_path, test.video, captions


def _scene_with(folder, name: str, damage) -> str:
    damaged = folder / f"scene-{name}"
    shutil.copytree(folder / "scene", damaged)
    damage(damaged)
    return str(damaged)


SCENE_DAMAGE = {
    "scene.json not JSON": (lambda d: (d / "scene.json").write_text("{"), r"scene\.json: damaged, not JSON"),
    "motion.npz missing": (lambda d: (d / "motion.npz").unlink(), r"motion\.npz: missing"),
    "motion.npz truncated": (
        lambda d: (d / "motion.npz").write_bytes((d / "motion.npz").read_bytes()[:100]),
        r"motion\.npz: damaged",
    ),
    "rules.yaml not UTF-8": (
        lambda d: (d / "rules.yaml").write_bytes(GARBAGE), r"rules\.yaml: not a rulebook: not UTF-8"
    ),
}


@pytest.mark.parametrize("case", SCENE_DAMAGE)
def test_a_damaged_scene_folder_is_named_and_nothing_is_written(inputs, case, monkeypatch, capsys):
    folder, video, _ = inputs
    damage, message = SCENE_DAMAGE[case]
    scene = _scene_with(folder, case.split()[0].replace(".", "-"), damage)
    code, err = run(["audit", video, "--scene", scene, "--out", folder / "out", "--explainer", "deterministic"],
                    monkeypatch, capsys)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err) and "Traceback" not in err
    assert not (folder / "out").exists()


def test_text_files_that_are_not_utf8_are_named_before_any_work(inputs, monkeypatch, capsys):
    folder, video, captions = inputs
    garbage, scene, out, rules = folder / "garbage.txt", folder / "scene", folder / "out", folder / "rules.txt"
    rules.write_text("Anomaly rules:\n1. Riding a bicycle\nNormal rules:\n1. Walking on the path\n")
    cases = [
        (["audit", video, "--scene", scene, "--out", out, "--captions", garbage], "not a caption file"),
        (["audit", video, "--scene", scene, "--out", out, "--captions", captions, "--caption-rules", garbage],
         "not a rule text"),
        (["reason-captions", garbage, "--rules", rules], "not a caption file"),
        (["reason-captions", captions, "--rules", garbage], "not a rule text"),
        (["chat", video, "--scene", scene, "--captions", garbage, "--ask", "summarize the video"],
         "not a caption file"),
    ]  # fmt: skip
    for argv, what in cases:
        code, err = run([*argv, "--explainer", "deterministic"] if argv[0] == "audit" else argv, monkeypatch, capsys)
        assert code == 2 and err.strip() == f"error: {garbage}: {what}: not UTF-8 text (byte 0)", (argv, err)
        assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["synth", "{tmp}/s", "--frames", "-5"], "--frames"),
        (["induce-rules", "{video}", "--out", "{tmp}/s", "--max-side", "5"], "--max-side"),
        (["audit", "{video}", "--scene", "{tmp}/scene", "--out", "{tmp}/s", "--fps", "-1"], "--fps"),
        (["chat", "{video}", "--fps", "0", "--ask", "hi"], "--fps"),
    ],
)
def test_settings_out_of_range_are_refused_as_usage_errors(inputs, argv, option, monkeypatch, capsys):
    folder, video, _ = inputs
    code, err = run([a.format(tmp=folder, video=video) for a in argv], monkeypatch, capsys)
    assert code == 2 and f"Invalid value for '{option}'" in err and "Traceback" not in err
    assert not (folder / "s").exists()


@pytest.mark.parametrize("frames", [1, 3])
def test_a_clip_shorter_than_the_smoothing_window_is_audited(inputs, frames, monkeypatch, capsys):
    """Under about 11 frames, screening's smoothing window outgrew the clip and the audit crashed."""
    import cv2

    folder, _, _ = inputs
    clip = folder / f"short-{frames}.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    for k in range(frames):
        writer.write(np.full((240, 320, 3), 90 + k, np.uint8))
    writer.release()
    out = folder / f"out-{frames}"
    code, err = run(["audit", clip, "--scene", folder / "scene", "--out", out, "--explainer", "deterministic"],
                    monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    report = Report.model_validate_json((out / "report.json").read_text())
    assert len(report.scores) == frames  # a grey clip is not the scene: it may well be anomalous
