"""Prompt templates and phrasing as data files (YAML beside this module), with a tiny loader."""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml


@cache
def load(name: str) -> dict[str, str]:
    """The mapping in ``<name>.yaml`` shipped with this package."""
    try:
        text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        available = sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
        raise KeyError(f"no prompt file {name!r}; available: {', '.join(available)}") from None
    return yaml.safe_load(text)
