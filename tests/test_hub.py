"""`models pull` of foundation-model checkpoints from a Hugging Face Hub (a fake one on 127.0.0.1 serving tiny
random checkpoints built here): pinned commit, every file checked, resumable, nothing half-kept."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

pytest.importorskip("huggingface_hub")

from anomalens import hub, registry, weights  # noqa: E402
from anomalens.cli import app  # noqa: E402
from anomalens.errors import ModelStoreError  # noqa: E402
from anomalens.tools import tiny  # noqa: E402
from tests.helpers.cli import run  # noqa: E402
from tests.helpers.hub import fake_hub  # noqa: E402
from tests.helpers.network import free_port  # noqa: E402

CLIP = weights.checkpoints()["clip-vit-b32"]
# Copies in other frameworks' formats, which a pull must leave on the Hub.
OTHER_FORMATS = {"tf_model.h5": b"\0" * 4096, "flax_model.msgpack": b"\1" * 4096, "README.md": b"# CLIP\n"}


@pytest.fixture
def served(tiny_weights, monkeypatch, tmp_path):
    """The tiny CLIP checkpoint served as ``clip-vit-b32``'s repository at its pinned commit; HF_ENDPOINT and
    the model store pointed at it and at a fresh folder."""
    from transformers import AutoImageProcessor

    repository = tmp_path / "repository"
    shutil.copytree(tiny_weights("clip:transformers"), repository)
    # The Hub's CLIP keeps its image processor in preprocessor_config.json, as transformers before 5 saved it.
    AutoImageProcessor.from_pretrained(repository).save_pretrained(repository)
    with fake_hub() as (fake, url):
        fake.add(CLIP.repo, CLIP.revision, repository, OTHER_FORMATS)
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("ANOMALENS_MODEL_DIR", str(tmp_path / "store"))
        yield fake, tmp_path / "store"


def test_models_pull_fetches_a_checkpoint_at_its_commit_and_the_backend_loads_it(served):
    fake, store = served
    result = CliRunner().invoke(app, ["models", "pull", "clip-vit-b32"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    folder = store / "clip-vit-b32"
    assert f"{CLIP.repo} @ {CLIP.revision[:12]} verified -> {folder}" in result.output
    served_files = fake.repos[CLIP.repo].files
    assert sorted(p.name for p in folder.iterdir()) == sorted([*served_files.keys() - OTHER_FORMATS.keys(), hub.RECORD])
    for name, data in served_files.items():
        assert (folder / name).read_bytes() == data if name not in OTHER_FORMATS else not (folder / name).exists()
    record = json.loads((folder / hub.RECORD).read_text())
    assert record["revision"] == CLIP.revision
    assert record["files"]["model.safetensors"] == hashlib.sha256(served_files["model.safetensors"]).hexdigest()
    assert not fake.fetched("tf_model.h5") and not fake.fetched("flax_model.msgpack")
    # Where the loaders look, and what the agent gets.
    assert weights.where("clip-vit-b32", store) == ("store", folder)
    assert "anomaly score" in tiny.exercise("clip:transformers", registry.load("clip:transformers").load(folder))
    doctor = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "300"})
    used_table = doctor.output.split("what the agent and the audits will use")[1]
    (used,) = [line for line in used_table.splitlines() if line.startswith("│ clip ")]
    assert "clip:transformers" in used and str(folder) in used
    again = CliRunner().invoke(app, ["models", "pull", "clip-vit-b32"], env={"COLUMNS": "200"})
    assert "already present" in again.output and len(fake.fetched("model.safetensors")) == 1


def test_a_file_that_does_not_match_the_hubs_record_is_refused_and_nothing_is_kept(served):
    fake, store = served
    weights_file = fake.repos[CLIP.repo].files["model.safetensors"]
    fake.served_instead["model.safetensors"] = bytes(b ^ 1 for b in weights_file)  # same size, other bytes
    with pytest.raises(ModelStoreError, match=r"model.safetensors has sha256 [0-9a-f]{64}, not the"):
        hub.pull(CLIP, root=store, progress=False)
    assert weights.where("clip-vit-b32", store) is None and not (store / "clip-vit-b32").exists()
    assert not (store / ".clip-vit-b32.partial" / "model.safetensors").exists()
    del fake.served_instead["model.safetensors"]  # the Hub serves the right bytes again: the next pull takes them
    assert (hub.pull(CLIP, root=store, progress=False) / "model.safetensors").read_bytes() == weights_file


def test_an_interrupted_pull_resumes_where_it_stopped(served):
    fake, store = served
    size = len(fake.repos[CLIP.repo].files["model.safetensors"])
    fake.cut_after["model.safetensors"] = size // 2  # the connection drops half-way, then the Hub is away
    with pytest.raises(ModelStoreError, match=r"fetching model.safetensors stopped .*again resumes it"):
        hub.pull(CLIP, root=store, progress=False)
    assert not (store / "clip-vit-b32").exists()
    fake.failing.clear()
    fake.requests.clear()
    folder = hub.pull(CLIP, root=store, progress=False)
    assert fake.fetched("model.safetensors") == [f"bytes={size // 2}-"]  # only the missing half
    assert not fake.fetched("config.json")  # files already complete are not fetched again
    assert (folder / "model.safetensors").read_bytes() == fake.repos[CLIP.repo].files["model.safetensors"]
    assert not (store / ".clip-vit-b32.partial").exists()


def test_an_unpinned_checkpoint_takes_mains_commit_and_records_it(served, tiny_weights):
    fake, store = served
    unpinned = CLIP.model_copy(update={"name": "clip-main", "revision": "main"})
    folder = hub.pull(unpinned, root=store, progress=False)
    assert hub.pulled_revision(folder) == CLIP.revision
    assert all(path.startswith(f"/{CLIP.repo}/resolve/{CLIP.revision}/") for _, path, _ in fake.requests[1:])


def test_a_hub_that_cannot_be_reached_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ANOMALENS_MODEL_DIR", str(tmp_path / "store"))
    code, err = run(["models", "pull", "sam-vit-base"], monkeypatch, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "sam-vit-base: cannot reach the Hugging Face Hub at http://127.0.0.1:" in line
    assert not (tmp_path / "store" / "sam-vit-base").exists()


def test_an_unknown_name_lists_what_can_be_pulled(monkeypatch, capsys):
    code, err = run(["models", "pull", "clip-vit-huge"], monkeypatch, capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and "unknown model 'clip-vit-huge'" in line
    assert "clip-vit-b32" in line and "qwen2.5-coder-1.5b" in line
