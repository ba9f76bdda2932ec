"""A Hugging Face Hub on 127.0.0.1 for tests: a repository's listing at a commit and its files, answered as
huggingface_hub reads them (``/api/models/<repo>/revision/<rev>?blobs=True``, ``HEAD``/``GET
/<repo>/resolve/<commit>/<file>`` with byte ranges). Large files are served as LFS files (their sha256 is the
listing's and the ETag), the rest by git blob id, as the real Hub does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.network import Handler, serve

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".h5", ".msgpack")
BINARY = "application/octet-stream"


@dataclass
class Repository:
    commit: str
    files: dict[str, bytes]

    def sibling(self, name: str) -> dict:
        data = self.files[name]
        entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


@dataclass
class FakeHub:
    repos: dict[str, Repository] = field(default_factory=dict)
    # What the test changes: bytes served instead of a file's own, a file whose first GET stops after so
    # many bytes, files that answer 503 (a Hub that went away) until removed from the set.
    served_instead: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range header

    def add(self, repo: str, commit: str, folder: Path, extra: dict[str, bytes] | None = None) -> None:
        """Serve every file under ``folder`` (and ``extra``) as ``repo`` at ``commit`` (also its ``main``)."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.repos[repo] = Repository(commit, {**files, **(extra or {})})

    def fetched(self, name: str) -> list[str | None]:
        """The Range header of each GET of file ``name`` (None for a whole file)."""
        return [r for method, path, r in self.requests if method == "GET" and path.endswith(f"/{name}")]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324 - git's object id


def _handler(hub: FakeHub) -> type[Handler]:
    class Hub(Handler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            path = self.path.split("?")[0]
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if path.startswith("/api/models/"):
                repo_name, _, revision = path.removeprefix("/api/models/").partition("/revision/")
                repo = hub.repos.get(repo_name)
                if repo is None or revision not in (repo.commit, "main"):
                    return self.reply(404, b'{"error": "Repository not found"}')
                listing = {"id": repo_name, "sha": repo.commit, "siblings": [repo.sibling(n) for n in repo.files]}
                return self.reply(200, json.dumps(listing).encode())
            owner, name, resolve, commit, filename = (path.lstrip("/").split("/", 4) + [""] * 5)[:5]
            repo = hub.repos.get(f"{owner}/{name}")
            if resolve != "resolve" or repo is None or commit != repo.commit or filename not in repo.files:
                return self.reply(404, b"Entry not found", "text/plain", {"X-Error-Code": "EntryNotFound"})
            if filename in hub.failing and self.command == "GET":
                return self.reply(503, b"Service Unavailable", "text/plain")
            sibling = repo.sibling(filename)
            data = hub.served_instead.get(filename, repo.files[filename])
            etag = sibling["lfs"]["sha256"] if "lfs" in sibling else sibling["blobId"]
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers["Range"] else 0
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            status, part = (206 if start else 200), data[start:]
            cut = hub.cut_after.pop(filename, None) if self.command == "GET" else None
            if cut is not None:  # the connection drops mid-file; the Hub is then away until the test says
                hub.failing.add(filename)
                self.close_connection = True
                return self.reply(status, part[:cut], BINARY, {**headers, "Content-Length": str(len(part))})
            self.reply(status, part, BINARY, headers)

        do_HEAD = do_GET  # noqa: N815 - reply sends no body to a HEAD

    return Hub


@contextmanager
def fake_hub() -> Iterator[tuple[FakeHub, str]]:
    """A ``FakeHub`` and its base URL (for ``HF_ENDPOINT``)."""
    hub = FakeHub()
    with serve(_handler(hub)) as url:
        yield hub, url
