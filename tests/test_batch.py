"""audit-batch on a local Ray instance: the events `audit` gives on each video, a corrupt video reported
without losing the others, and a killed batch resumed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomalens.errors import MediaError
from anomalens.pipelines import audit
from anomalens.pipelines.batch import LEDGER, audit_batch, batch_inputs, report_names
from anomalens.report import Report

pytest.importorskip("ray", reason="audit-batch runs on Ray: pip install 'anomalens[ray]'")


@pytest.fixture(scope="module")
def videos(scene_and_video, tmp_path_factory):
    """The scene saved, and a folder of three clips of its walkway (two with anomalies) and a corrupt one."""
    from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene

    scene = scene_and_video[0]
    root = tmp_path_factory.mktemp("batch")
    folder = root / "videos"
    folder.mkdir()
    clips = {"cyclist": (Anomaly("cyclist", 10),), "crowd": (Anomaly("crowd", 20),), "quiet": ()}
    for seed, (name, anomalies) in enumerate(clips.items(), start=21):
        clip = write_scene(SceneSpec(n_frames=90, seed=seed, camera_seed=5, anomalies=anomalies), root / name)
        shutil.copy(clip.video, folder / f"{name}.avi")
    (folder / "corrupt.avi").write_text("not a video\n" * 40)
    return scene.save(root / "scene"), folder


def test_inputs_are_expanded_from_folders_and_manifests(videos, tmp_path):
    _, folder = videos
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# the clips\n{folder / 'crowd.avi'}\n{os.path.relpath(folder / 'quiet.avi', tmp_path)}\n")
    found = batch_inputs([manifest, folder])  # a video named twice is audited once
    assert [p.name for p in found] == ["crowd.avi", "quiet.avi", "corrupt.avi", "cyclist.avi"]
    same_stem = [folder / "a" / "clip.avi", folder / "b" / "clip.avi", folder / "x.avi"]
    assert list(report_names(same_stem).values()) == ["a-clip", "b-clip", "x"]


def test_a_manifest_line_may_name_a_part_of_a_video(videos, tmp_path):
    """``clip.avi@0:01-0:03`` in a manifest: that part, audited on its own and reported in a folder of its own."""
    _, folder = videos
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{folder / 'crowd.avi'}@0:01-0:03\n{folder / 'crowd.avi'}@3-\n{folder / 'crowd.avi'}\n")
    found = batch_inputs([manifest])
    crowd = (folder / "crowd.avi").resolve()
    assert found == [Path(f"{crowd}@0:01-0:03"), Path(f"{crowd}@0:03-"), crowd]
    assert list(report_names(found).values()) == ["crowd-0.01-0.03", "crowd-0.03-", "crowd"]
    manifest.write_text(f"{folder / 'gone.avi'}@1-2\n")
    with pytest.raises(MediaError, match="gone.avi@1-2: no such file"):
        batch_inputs([manifest])


def test_every_video_of_a_batch_gets_a_report_folder_of_its_own(tmp_path):
    videos = [tmp_path / "x" / "a" / "clip.avi", tmp_path / "y" / "a" / "clip.avi", tmp_path / "x" / "a" / "clip.mkv",
              tmp_path / "clip.avi", Path("/x/a/clip.avi"), Path("/x-a/clip.avi")]  # fmt: skip
    names = report_names(videos)
    assert len(set(names.values())) == len(videos), names
    assert names[tmp_path / "x" / "a" / "clip.mkv"].endswith("clip-mkv")


def test_a_hash_inside_a_manifest_line_is_part_of_the_name(videos, tmp_path):
    _, folder = videos
    shutil.copy(folder / "quiet.avi", tmp_path / "take#2.avi")
    manifest = tmp_path / "list.txt"
    manifest.write_text("  # a comment\ntake#2.avi\n")
    assert batch_inputs([manifest]) == [(tmp_path / "take#2.avi").resolve()]


def test_a_batch_gives_each_video_its_audit_and_reports_the_corrupt_one(videos, tmp_path):
    scene, folder = videos
    out = tmp_path / "out"
    result = audit_batch([folder], scene, out=out, workers=2, explainer="deterministic", progress=False)
    assert sorted(r["video"] for r in result.done) == [str(folder / f"{n}.avi") for n in ("crowd", "cyclist", "quiet")]
    (failed,) = result.failed
    assert failed["video"] == str(folder / "corrupt.avi") and "cannot be decoded" in failed["error"]
    for record in result.done:  # the same code path as `audit`: the same events
        alone = audit(record["video"], scene, explainer="deterministic", progress=False)
        batched = Report.model_validate_json((Path(record["report"]) / "report.json").read_text())
        assert batched.events == alone.events and record["events"] == len(alone.events)
    assert any(r["events"] for r in result.done)

    again = audit_batch([folder], scene, out=out, workers=2, explainer="deterministic", progress=False)
    assert len(again.skipped) == 3 and again.done == [] and len(again.failed) == 1  # only the failure is redone
    lines = (out / LEDGER).read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["video"] for line in lines)


KILLED_BATCH = """
import sys
from anomalens.pipelines.batch import audit_batch
audit_batch(sys.argv[1:-2], sys.argv[-2], out=sys.argv[-1], workers=1, explainer="deterministic", progress=False)
"""


def test_a_killed_batch_keeps_what_finished_and_resumes(videos, tmp_path):
    scene, folder = videos
    clips = [Path(shutil.copy(folder / name, tmp_path / name)) for name in ("cyclist.avi", "crowd.avi", "quiet.avi")]
    out = tmp_path / "out"
    script = tmp_path / "batch.py"
    script.write_text(KILLED_BATCH)
    process = subprocess.Popen(
        [sys.executable, str(script), *map(str, clips), str(scene), str(out)], start_new_session=True
    )
    ledger = out / LEDGER
    deadline = time.monotonic() + 300
    while not (ledger.is_file() and ledger.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    process.wait()
    finished = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert 1 <= len(finished) < len(clips), "killed after the first video, before the last"
    resumed = audit_batch(clips, scene, out=out, workers=1, explainer="deterministic", progress=False)
    assert {r["video"] for r in resumed.skipped} == {r["video"] for r in finished}
    assert len(resumed.skipped) + len(resumed.done) == len(clips) and resumed.failed == []
    for record in resumed.skipped + resumed.done:
        Report.model_validate_json((Path(record["report"]) / "report.json").read_text())  # whole
    shutil.copyfile(clips[0], clips[2])  # other footage under a name the ledger says is done: audited again
    again = audit_batch(clips, scene, out=out, workers=1, explainer="deterministic", progress=False)
    assert [r["video"] for r in again.done] == [str(clips[2])] and len(again.skipped) == 2
