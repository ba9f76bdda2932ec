"""Small file helpers."""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from pathlib import Path

from anomalens.errors import ConfigError


def slug(text: str, limit: int = 60) -> str:
    """``text`` as a file or topic name: runs of anything but letters, digits, ``_.-`` as one ``_``; its last
    ``limit`` characters (a path's tail tells sources apart)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[-limit:]


def read_text(path: Path, what: str) -> str:
    """The text of a file a user gave (``what`` it should be, for the error): a missing file, a folder or bytes
    that are not UTF-8 get one clear line naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a {what}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a {what}: not UTF-8 text (byte {error.start})") from None


def writable_folder(path: str | Path, what: str = "the results") -> Path:
    """``path`` as a folder that can take files, checked before long work writes there and left as it is (made
    when the first file is written): a file in the way, or a folder that cannot be written (read-only,
    immutable), gets one clear line."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{existing}: exists and is not a folder; give a folder for {what}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{path}: cannot write {what} there ({error.strerror or error})") from None
    return path


def writable_file(path: str | Path) -> Path:
    """``path`` as a file that long work can write when it ends, checked before it starts: not a folder, in a
    folder that takes files."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder; give a file name to write")
    writable_folder(path.parent, path.name)
    return path


def append_line(path: Path, line: str) -> None:
    """Append one whole line and flush it to disk: a log that a kill can cut only between lines."""
    with path.open("a", encoding="utf-8") as log:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file in the same folder, so readers never see half a file."""
    os.replace(_written_beside(path, data), path)


def keep_copy(path: Path, data: str | bytes) -> Path:
    """Keep ``data`` (what ``path`` holds before it is replaced) beside it as ``<stem>.v<N><suffix>``, N the next free
    number. The copy is written whole, then linked to its name, which fails if the name exists: no kept copy is ever
    overwritten or half-written, whichever process or store keeps one at the same moment."""
    written = _written_beside(path, data)
    try:
        for n in itertools.count(1):
            kept = path.with_name(f"{path.stem}.v{n}{path.suffix}")
            try:
                os.link(written, kept)
            except FileExistsError:
                continue
            return kept
    finally:
        os.unlink(written)


def _written_beside(path: Path, data: str | bytes) -> str:
    """A temporary file in ``path``'s folder holding ``data``, readable as the umask allows (temporary files are
    created 0600; reports and rulebooks are for sharing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = isinstance(data, str)
    with tempfile.NamedTemporaryFile("w" if text else "wb", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8" if text else None) as tmp:  # fmt: skip
        tmp.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp.name, 0o666 & ~umask)
    return tmp.name


def read_versioned(path: Path, what: str, version: int, remedy: str) -> dict:
    """The JSON object in ``path`` if its ``format_version`` is ``version``; a clear error otherwise (a file
    of another anomalens, or not ``what`` at all), which says the ``remedy``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a {what} (not JSON: {error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a {what} (a JSON {type(data).__name__}, not an object)")
    found = data.get("format_version")
    if found != version:
        written = "an earlier anomalens (no format version)" if found is None else f"format {found}"
        raise ConfigError(f"{path}: a {what} of {written}; this anomalens reads format {version}: {remedy}")
    return data
