"""Backends by name (``"kind:name"`` -> ``"module:attribute"``), imported only when first used.

Every backend is described once, in ``backends.yaml``: what loads it, what it needs, its place in its kind's
preference order, the checkpoints it loads and how ``doctor --tiny`` builds it. Registering costs nothing:
the module named in an entry is imported by ``load``. Unknown names list what exists; a backend whose
optional dependencies are missing names the ``pip install`` that adds them.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from anomalens.errors import BackendNotFound, MissingExtra

_COMMIT = re.compile(r"[0-9a-f]{40}")


class Checkpoint(BaseModel):
    """Weights a backend loads, found offline (a folder, the model store, or a warm Hugging Face cache)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    backend: str
    repo: str  # Hugging Face repository id
    revision: str  # a commit, or "main" when not pinned
    files: tuple[str, ...]  # a complete copy holds these (relative paths)
    # What `models pull` fetches besides `files` (patterns): configuration, tokenizer, safetensors weights.
    fetch: tuple[str, ...] = ("*.json", "*.txt", "*.model", "*.jinja", "*.safetensors")
    license: str
    summary: str

    @property
    def pinned(self) -> bool:
        return bool(_COMMIT.fullmatch(self.revision))


class Backend(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str  # "kind:name", e.g. "scorer:scene"
    target: str  # "module:attribute"
    requires: tuple[str, ...] = ()  # importable top-level modules it needs
    extra: str | None = None  # the pip extra that provides them
    summary: str = ""
    tiny: str | None = None  # the builder of a tiny random checkpoint (anomalens.tools.tiny)
    not_built: str | None = None  # why no tiny checkpoint is built
    store: str | None = None  # the model-store entry whose real weights it loads
    vocabulary: str | None = None  # a detector's fixed vocabulary (e.g. coco): it names objects without prompts
    floor: float | None = Field(default=None, gt=0, lt=1)  # a detector's lowest score kept as a scene's object
    checkpoints: tuple[Checkpoint, ...] = Field(default=())

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    def missing(self) -> list[str]:
        """Required modules that are not installed (checked without importing them)."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


@cache
def backends() -> dict[str, Backend]:
    """Every backend of ``backends.yaml``, in its order."""
    text = resources.files("anomalens").joinpath("backends.yaml").read_text(encoding="utf-8")
    out = {}
    for name, entry in yaml.safe_load(text)["backends"].items():
        checkpoints = tuple(
            Checkpoint(name=key, backend=name, **spec) for key, spec in entry.pop("checkpoints", {}).items()
        )
        out[name] = Backend(name=name, checkpoints=checkpoints, **entry)
    return out


def of_kind(kind: str) -> list[Backend]:
    """The backends of ``kind`` (e.g. ``detector``) in their order of preference."""
    return [b for b in backends().values() if b.kind == kind]


def get(name: str) -> Backend:
    try:
        return backends()[name]
    except KeyError:
        kind = name.split(":", 1)[0]
        same_kind = [n for n in backends() if n.startswith(kind + ":")]
        known = same_kind or list(backends())
        raise BackendNotFound(f"unknown backend {name!r}; available: {', '.join(sorted(known))}") from None


def load(name: str) -> Any:
    """Import and return the class or function registered under ``name``."""
    backend = get(name)
    missing = backend.missing()
    if missing:
        install = f"pip install 'anomalens[{backend.extra}]'" if backend.extra else f"pip install {' '.join(missing)}"
        raise MissingExtra(f"backend {name!r} needs {', '.join(missing)}: {install}")
    module, attribute = backend.target.split(":")
    return getattr(importlib.import_module(module), attribute)
