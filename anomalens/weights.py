"""Foundation-model weights by name (the checkpoints of ``backends.yaml``), resolved offline.

A checkpoint is looked for, in order: the explicit path given; ``<model_dir>/<name>/`` (where ``models pull``
puts it, ``anomalens.hub``); the Hugging Face cache at its pinned revision (read with ``local_files_only``:
loading never downloads). When none holds it, one error names the checkpoint, every place looked and how to
provide it.
"""

from __future__ import annotations

from pathlib import Path

from anomalens import registry
from anomalens.errors import WeightsNotFound
from anomalens.modelstore import model_dir
from anomalens.registry import Checkpoint


def checkpoints() -> dict[str, Checkpoint]:
    """Every checkpoint of every backend (``backends.yaml``), by name."""
    return {c.name: c for b in registry.backends().values() for c in b.checkpoints}


def complete(checkpoint: Checkpoint, folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in checkpoint.files)


def _hf_cache(repo: str, revision: str) -> Path | None:
    """The cached snapshot of ``repo`` at ``revision``, or None; never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except ImportError:
        return None
    except Exception:  # noqa: BLE001 - the hub raises several types for "not in the cache"
        return None


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return HF_HUB_CACHE
    except ImportError:
        return "the Hugging Face cache (huggingface_hub is not installed)"


def where(name: str, root: Path | None = None) -> tuple[str, Path] | None:
    """("store" | "hf-cache", folder) holding checkpoint ``name`` complete, or None."""
    entry = checkpoints()[name]
    stored = model_dir(root) / name
    if complete(entry, stored):
        return "store", stored
    cached = _hf_cache(entry.repo, entry.revision)
    if cached is not None and complete(entry, cached):
        return "hf-cache", cached
    return None


def resolve(weights: str | Path | None, backend: str, root: Path | None = None) -> Path:
    """A folder or file to load ``backend`` from: an explicit path, a checkpoint name, a cached Hugging Face id,
    or None for the backend's first checkpoint that is present."""
    if weights is not None and Path(weights).expanduser().exists():
        return Path(weights).expanduser()
    known = list(registry.get(backend).checkpoints)
    if weights is None:
        candidates = known
    elif str(weights) in checkpoints():
        candidates = [checkpoints()[str(weights)]]
        if candidates[0].backend != backend:
            raise WeightsNotFound(f"checkpoint {weights!r} is for {candidates[0].backend}, not {backend}")
    else:
        cached = _hf_cache(str(weights), "main") if "/" in str(weights) else None
        if cached is not None:
            return cached
        names = ", ".join(c.name for c in known) or "none"
        raise WeightsNotFound(
            f"{weights}: no such file or folder, not a checkpoint name for {backend} ({names}) and not a repository "
            f"in the Hugging Face cache ({_hf_cache_dir()})"
        )
    for entry in candidates:
        found = where(entry.name, root)
        if found is not None:
            return found[1]
    if not candidates:
        raise WeightsNotFound(f"{backend}: no checkpoint is registered; pass a folder with --weights")
    entry = candidates[0]
    raise WeightsNotFound(
        f"weights {entry.name!r} for {backend} are not on this machine. Looked in {model_dir(root) / entry.name} "
        f"and in the Hugging Face cache ({_hf_cache_dir()}) for {entry.repo} at revision {entry.revision}. "
        f"Get them with `anomalens models pull {entry.name}` (from the Hub, or the mirror HF_ENDPOINT names), "
        f"copy a folder holding {', '.join(entry.files)} to {model_dir(root) / entry.name}, or pass the folder"
    )
