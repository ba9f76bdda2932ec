"""The documented Python API, run as a user would: the example in docs/, end to end."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.environment import stored_model

REPO = Path(__file__).resolve().parents[1]


def test_the_top_level_api_is_the_pipelines_and_loads_lazily():
    import anomalens
    from anomalens import pipelines

    assert {name: getattr(anomalens, name) for name in anomalens.API} == {
        name: getattr(pipelines, name) for name in anomalens.API
    }
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        anomalens.nothing  # noqa: B018


@pytest.mark.slow
def test_the_documented_example_runs(walkway, tmp_path):
    """Deterministic explanations keep it quick; the chat answer comes from the smallest GGUF model in the store."""
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")
    stored_model("smollm2-135m")
    normal, test = walkway
    env = os.environ | {
        "ANOMALENS_EXPLAINER": "deterministic",
        "ANOMALENS_LLM_MODEL": "smollm2-135m",
        "ANOMALENS_CHAT_DIR": str(tmp_path / "chat"),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "example.py"), str(normal.video), str(test.video), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\d+ rules learned$", done.stdout, re.M)
    assert (tmp_path / "out" / "scene" / "rules.yaml").is_file()
    assert (tmp_path / "out" / "audit" / "report.html").is_file() and (tmp_path / "out" / "explain" / "scene").is_dir()
    events = re.findall(r"^event-\d+ [\d.]+-[\d.]+ s, rules \[.*\]: From ", done.stdout, re.M)
    assert len(events) >= 3  # the walkway holds six injected anomalies
    assert re.search(r"^\d+ events found with no scene model$", done.stdout, re.M)
    assert re.search(r"^session [0-9a-f]{8}: ", done.stdout, re.M)
