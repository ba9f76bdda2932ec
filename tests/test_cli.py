import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.report import Report

runner = CliRunner()
COMMANDS = ["demo", "induce-rules", "audit", "synth", "doctor", "models", "ask", "eval"]


def test_every_command_has_help():
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in COMMANDS:
        assert command in top.output
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_demo_writes_reports_that_open(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        # The agent's path is the README's set-up command's (and tests/test_agent.py's): here, the rest of it.
        [sys.executable, "-m", "anomalens", "demo", "--out", str(out), "--explainer", "deterministic"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = Report.model_validate_json((out / "report.json").read_text())
    assert report.explainer == "deterministic" and {x.generator for x in report.explanations} == {"deterministic"}
    assert report.events and report.ground_truth is not None
    assert report.metrics["frame_auc"] > 0.7
    assert report.metrics["true_events_found"] >= 3
    assert f"{len(report.events)} events" in result.stdout and "report.html" in result.stdout

    class Images(HTMLParser):
        count = 0

        def handle_starttag(self, tag, attrs):
            self.count += tag == "img"

    page = Images()
    page.feed((out / "report.html").read_text())
    assert page.count == len(report.events) + 1  # each event's keyframe, and the zone map
    assert (out / "zones.jpg").is_file() and sorted(p.stem for p in (out / "keyframes").glob("*.jpg")) == sorted(
        e.id for e in report.events
    )


def test_synth_writes_ground_truth_and_bad_arguments_get_one_line_errors(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "anomalens", "synth", str(tmp_path / "s"), "--frames", "40", "--anomaly", "crowd@5"],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    events = json.loads((tmp_path / "s" / "events.json").read_text())
    assert [e["kind"] for e in events] == ["crowd"]
    for bad, message in [("meteor@3", "expected KIND@FRAME"), ("crowd@99", "outside 0..39")]:
        result = subprocess.run(
            [sys.executable, "-m", "anomalens", "synth", str(tmp_path / "x"), "--frames", "40", "--anomaly", bad],
            capture_output=True, text=True,
        )
        assert result.returncode == 2 and message in result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_doctor_lists_extras_backends_and_data():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for word in ("extras", "clip", "vllm", "llamacpp", "scorer:scene", "model store", "benchmark data"):
        assert word in result.output


@pytest.mark.parametrize("flag", ["--version"])
def test_version(flag):
    from anomalens import __version__

    result = runner.invoke(app, [flag])
    assert result.exit_code == 0 and __version__ in result.output


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "anomalens", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_induce_rules_then_audit(walkway, tmp_path):
    normal, test = walkway
    learned = run("induce-rules", normal.video, "--out", tmp_path / "scene")
    assert learned.returncode == 0, learned.stderr
    assert (tmp_path / "scene" / "rules.yaml").is_file() and "rules ->" in learned.stdout
    # The agent explains events in tests/test_agent.py and in the README's set-up command (the demo).
    audited = run(
        "audit", test.video, "--scene", tmp_path / "scene", "--out", tmp_path / "report", "--explainer", "deterministic"
    )
    assert audited.returncode == 0, audited.stderr
    assert "explanations: deterministic" in audited.stderr
    report = Report.model_validate_json((tmp_path / "report" / "report.json").read_text())
    assert report.events and report.rulebook is not None
    assert f"{len(report.events)} events" in audited.stdout
    missing = run("audit", test.video, "--scene", tmp_path / "nowhere", "--out", tmp_path / "r2")
    assert missing.returncode == 2 and "not a scene folder" in missing.stderr and "Traceback" not in missing.stderr
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 1000)
    bad = run("audit", corrupt, "--scene", tmp_path / "scene", "--out", tmp_path / "r3")
    assert bad.returncode == 2 and str(corrupt) in bad.stderr and "corrupt" in bad.stderr


CAPTION_RULES = """\
**Anomaly Human Activities:**
1. Riding a bicycle or scooter, skateboarding

**Normal Human Activities:**
1. Walking alone or with another person
"""


def test_audit_screens_captions_with_caption_rules(walkway, tmp_path):
    """The scene was learned from this very clip, so motion finds nothing; its captions name a cyclist."""
    from anomalens.pipelines.captions import SMOOTHING_WIDTH
    from tests.helpers.environment import stored_model

    stored_model("all-minilm-l6-v2")
    normal, _ = walkway
    assert run("induce-rules", normal.video, "--out", tmp_path / "scene").returncode == 0
    captions = tmp_path / "captions.txt"
    walking, cycling = "One person is walking alone on the path.", "One person is riding a bicycle on the path."
    captions.write_text("\n".join([walking] * 100 + [cycling] * 40 + [walking] * 100) + "\n")
    (tmp_path / "rules.txt").write_text(CAPTION_RULES)
    common = ["audit", normal.video, "--scene", tmp_path / "scene", "--explainer", "deterministic"]
    motion = run(*common, "--out", tmp_path / "motion")
    rules = ["--caption-rules", tmp_path / "rules.txt"]
    both = run(*common, "--out", tmp_path / "both", "--captions", captions, *rules)
    assert motion.returncode == 0 and both.returncode == 0, motion.stderr + both.stderr
    before = Report.model_validate_json((tmp_path / "motion" / "report.json").read_text())
    after = Report.model_validate_json((tmp_path / "both" / "report.json").read_text())
    assert not any(e.start_frame <= 120 <= e.end_frame for e in before.events)
    (event,) = [e for e in after.events if e.start_frame <= 120 <= e.end_frame]
    reach = SMOOTHING_WIDTH // 2  # the moving average spreads the 40 cycling frames by this much each way
    assert 100 - reach <= event.start_frame <= 105 and 135 <= event.end_frame <= 139 + reach
    assert 'describe "riding a bicycle"' in event.summary and "anomaly-1" in event.summary
    assert "caption rules on" in after.scorer
    alone = run(*common, "--out", tmp_path / "r", *rules)
    assert alone.returncode == 2 and "give them with --captions" in alone.stderr


@pytest.mark.data
def test_eval_ped2_writes_every_metric(shared_data, tmp_path):
    """On a part of Ped2 laid out as Ped2 (four training videos, two test videos): the whole benchmark is what the
    command measures, not what a test needs to run."""
    ped2, part = shared_data / "ucsd_ped2", tmp_path / "ped2"
    for folder, videos in (("train", ("01", "02", "03", "04")), ("test", ("01", "02")), ("test_masks", ("01", "02"))):
        (part / folder).mkdir(parents=True)
        for video in videos:
            (part / folder / video).symlink_to(ped2 / folder / video)
    labels = json.loads((ped2 / "labels.json").read_text())
    (part / "labels.json").write_text(json.dumps({video: labels[video] for video in ("01", "02")}))
    result = run("eval", "ped2", "--data", part, "--json", tmp_path / "ped2.json", timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "ped2.json").read_text())
    for key in ("frame_auc", "frame_aupr", "frame_f1", "pixel_auroc", "rbdc", "tbdc", "pipeline_fps", "decode_fps", "seconds"):
        assert key in metrics
    assert metrics["frames"] == len(labels["01"]) + len(labels["02"])
    for key in ("frame_auc", "frame_aupr", "frame_f1", "pixel_auroc", "rbdc", "tbdc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["frame_auc"] > 0.7 and metrics["pixel_auroc"] > 0.8  # far better than chance


def test_models_list_shows_what_is_present(tmp_path):
    from anomalens import modelstore

    empty_store = {**os.environ, "ANOMALENS_MODEL_DIR": str(tmp_path)}
    empty = run("models", "list", env=empty_store)
    assert empty.returncode == 0
    for entry in modelstore.catalog().values():
        assert entry.name in empty.stdout and entry.license in empty.stdout
    assert " yes " not in empty.stdout  # nothing in an empty store
    missing = run("ask", "hi", "--model", "smollm2-135m", env=empty_store)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "anomalens models pull smollm2-135m" in missing.stderr
    unknown = run("models", "pull", "gpt-17")
    assert unknown.returncode == 2 and "unknown model 'gpt-17'; known:" in unknown.stderr


def test_ask_answers_with_the_embedded_llm(smollm2):
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")
    result = run("ask", "Name a colour.", "--model", str(smollm2), "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "tokens in" in result.stderr and "tokens/s" in result.stderr


@pytest.mark.slow
def test_eval_llm_measures_a_model(smollm2, tmp_path):
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")
    out = tmp_path / "llm.json"
    result = run("eval", "llm", "--model", str(smollm2), "--json", str(out))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    from anomalens.eval.llm_bench import prompt_set

    cases = prompt_set()
    assert row["cases"] == len(cases["cases"]) == len(row["rows"]) and len(row["tool_rows"]) == len(cases["tool_cases"])
    assert row["accuracy"] == sum(r["correct"] for r in row["rows"]) / row["cases"]
    assert row["valid_after_retry"] >= row["valid_first_try"] > 0.5  # grammar-constrained JSON
    assert row["median_tokens_per_s"] > 0 and row["load_seconds"] > 0
