import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.report import Report

runner = CliRunner()
COMMANDS = ["demo", "synth", "doctor"]


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
        [sys.executable, "-m", "anomalens", "demo", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = Report.model_validate_json((out / "report.json").read_text())
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
    assert page.count == len(report.events)


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
    for word in ("extras", "clip", "vllm", "llamacpp", "scorer:occupancy", "model store", "benchmark data"):
        assert word in result.output


@pytest.mark.parametrize("flag", ["--version"])
def test_version(flag):
    from anomalens import __version__

    result = runner.invoke(app, [flag])
    assert result.exit_code == 0 and __version__ in result.output
