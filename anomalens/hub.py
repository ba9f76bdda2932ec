"""Foundation-model checkpoints (``backends.yaml``) fetched from the Hugging Face Hub: ``anomalens models pull``.

A checkpoint is fetched at its pinned commit. ``huggingface_hub`` lists the commit's files: each one's size
and, for the large (LFS) files, their sha256, or else their git blob id; every file fetched is checked against
those before anything is moved into the store (a commit names its files' content, so this pins the bytes
too). The files themselves are fetched here, from the Hub's ``resolve`` URLs, because huggingface_hub 2 no
longer resumes a download in a later run: they land in ``<model_dir>/.<name>.partial/`` (a file being fetched
as ``<file>.part``), which stays after a failure so the next pull asks only for the missing bytes, and the
folder becomes ``<model_dir>/<name>/`` only once complete. ``HF_ENDPOINT`` points it at a
mirror (or at a test server on 127.0.0.1); ``HF_TOKEN`` is used for gated repositories.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from anomalens.errors import ModelStoreError
from anomalens.files import atomic_write
from anomalens.modelstore import CHUNK, model_dir
from anomalens.progress import byte_bar
from anomalens.registry import Checkpoint

DEFAULT_ENDPOINT = "https://huggingface.co"
TRANSPORTS = ("httpx", "httpx2", "httpcore", "requests", "urllib3")  # huggingface_hub's HTTP stacks, by version
RECORD = ".anomalens-pull.json"  # what was pulled: repository, commit, each file's sha256


def endpoint() -> str:
    """The Hub to pull from: ``HF_ENDPOINT`` (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def wanted(checkpoint: Checkpoint, names: list[str]) -> list[str]:
    """Which of a repository's files a pull fetches: the checkpoint's own files and those its patterns match
    (configuration, tokenizer and safetensors weights by default; never the other frameworks' copies)."""
    return [n for n in names if n in checkpoint.files or any(fnmatch.fnmatch(n, p) for p in checkpoint.fetch)]


def pull(checkpoint: Checkpoint, *, root: Path | None = None, progress: bool = True) -> Path:
    """Fetch ``checkpoint`` into ``<model_dir>/<name>/`` and return that folder; nothing is moved there unless
    every file matches the Hub's record of the pinned commit."""
    try:
        from huggingface_hub import HfApi, hf_hub_url
    except ImportError:
        raise ModelStoreError(
            f"{checkpoint.name}: pulling from the Hugging Face Hub needs huggingface_hub: pip install 'anomalens[hf]'"
        ) from None
    store = model_dir(root)
    target, partial = store / checkpoint.name, store / f".{checkpoint.name}.partial"
    hub = endpoint()
    commit, files = _listing(HfApi(endpoint=hub), checkpoint, hub)
    names = wanted(checkpoint, sorted(files))
    absent = [f for f in checkpoint.files if f not in files]
    if absent:
        raise ModelStoreError(f"{checkpoint.name}: {checkpoint.repo} at {commit[:12]} has no {', '.join(absent)}")
    if partial.is_dir() and _partial_commit(partial) != commit:  # files of another commit: start again
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / ".commit").write_text(commit)
    total, sha256s = sum(files[n].size or 0 for n in names), {}
    with byte_bar(f"{checkpoint.name}: {len(names)} files from {hub}", total, enabled=progress) as advance:
        for name in names:
            path = partial / name
            if path.is_file():  # completed by an earlier pull
                advance(path.stat().st_size)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                url = hf_hub_url(checkpoint.repo, name, revision=commit, endpoint=hub)
                _download(checkpoint, url, name, path, files[name].size, advance)
            sha256s[name] = _checked(checkpoint, name, path, files[name])
    (partial / ".commit").unlink()
    record = {"repo": checkpoint.repo, "revision": commit, "endpoint": hub, "files": sha256s}
    atomic_write(partial / RECORD, json.dumps(record, indent=2))
    if target.exists():  # an incomplete copy (a complete one is never pulled again)
        shutil.rmtree(target)
    os.replace(partial, target)
    return target


def _partial_commit(folder: Path) -> str | None:
    marker = folder / ".commit"
    return marker.read_text() if marker.is_file() else None


def pulled_revision(folder: Path) -> str:
    """The commit a pulled checkpoint folder was fetched at."""
    return json.loads((folder / RECORD).read_text(encoding="utf-8"))["revision"]


def _listing(api, checkpoint: Checkpoint, hub: str) -> tuple[str, dict]:
    """The commit pulled (the pinned one, or what ``main`` points at now) and its files by name."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        info = api.model_info(checkpoint.repo, revision=checkpoint.revision, files_metadata=True)
    except OfflineModeIsEnabled:
        raise ModelStoreError(f"{checkpoint.name}: HF_HUB_OFFLINE is set; unset it to pull from the Hub") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "no"
        raise ModelStoreError(
            f"{checkpoint.name}: the Hub at {hub} answered {status} for {checkpoint.repo} at revision "
            f"{checkpoint.revision} (a gated repository needs HF_TOKEN)"
        ) from None
    except Exception as error:  # noqa: BLE001 - refused, no route, DNS, timeout: the transport's own types
        if isinstance(error, OSError) or type(error).__module__.split(".")[0] in TRANSPORTS:
            raise ModelStoreError(
                f"{checkpoint.name}: cannot reach the Hugging Face Hub at {hub} ({type(error).__name__}: {error}); "
                f"on a machine without it, copy a folder holding {', '.join(checkpoint.files)} to "
                f"<model dir>/{checkpoint.name}/, or set HF_ENDPOINT to a mirror"
            ) from None
        raise
    return info.sha, {s.rfilename: s for s in info.siblings or []}


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """Follows the Hub's redirects to its file storage, never sending the token to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        host = urllib.parse.urlsplit(req.full_url).netloc
        if redirected is not None and urllib.parse.urlsplit(newurl).netloc != host:
            redirected.remove_header("Authorization")
        return redirected


def _download(checkpoint: Checkpoint, url: str, name: str, path: Path, size: int, advance) -> None:
    """``url`` into ``path``, through ``<path>.part``, which stays after a failure: the next pull asks only for
    the bytes after it (an HTTP range), as huggingface_hub 2 no longer does across runs."""
    from huggingface_hub.utils import build_hf_headers

    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not a beginning of this file
        part.unlink()
        have = 0
    if have == size:  # complete when the last pull stopped
        return os.replace(part, path)
    headers = build_hf_headers() | ({"Range": f"bytes={have}-"} if have else {})
    opener = urllib.request.build_opener(_SameHostAuth)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=60) as response:
            resumed = response.status == 206
            advance(have if resumed else 0, f"{checkpoint.name}: {name}")
            with part.open("ab" if resumed else "wb") as sink:
                for block in iter(lambda: response.read(CHUNK), b""):
                    sink.write(block)
                    advance(len(block))
    except (OSError, http.client.HTTPException) as error:  # HTTP errors, a dropped connection, a timeout
        raise ModelStoreError(
            f"{checkpoint.name}: fetching {name} stopped ({type(error).__name__}: {error}); "
            f"`anomalens models pull {checkpoint.name}` again resumes it"
        ) from None
    if part.stat().st_size != size:
        raise ModelStoreError(
            f"{checkpoint.name}: fetching {name} stopped at {part.stat().st_size} of {size} bytes; "
            f"`anomalens models pull {checkpoint.name}` again resumes it"
        )
    os.replace(part, path)


def _digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob id) of a file, read once."""
    sha256, blob = hashlib.sha256(), hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's id
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            sha256.update(block)
            blob.update(block)
    return sha256.hexdigest(), blob.hexdigest()


def _checked(checkpoint: Checkpoint, name: str, path: Path, sibling) -> str:
    """``path``'s sha256, once it matches the Hub's listing; a file that differs is deleted, so the next pull
    fetches it again whole."""
    sha256, blob = _digests(path)
    expected, got = (sibling.lfs.sha256, sha256) if sibling.lfs else (sibling.blob_id, blob)
    if expected is None or got != expected:
        path.unlink()
        kind = "sha256" if sibling.lfs else "git blob id"
        raise ModelStoreError(
            f"{checkpoint.name}: {name} has {kind} {got}, not the {expected} the Hub lists for {checkpoint.repo} "
            f"at that commit; it was deleted"
        )
    return sha256
