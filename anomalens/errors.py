"""Errors that reach users as one clear line (the CLI prints ``str(error)`` and exits 2)."""

from __future__ import annotations

from pathlib import Path


class AnomalensError(Exception):
    """Base class for every error anomalens raises on purpose."""


class MediaError(AnomalensError):
    """A video, image or frame folder that cannot be used; names the input and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MediaWarning(UserWarning):
    """Input that is usable but damaged (e.g. a truncated video): what could be read is kept."""


class ConfigError(AnomalensError):
    """A configuration file or value that is invalid."""


class BackendNotFound(AnomalensError):
    """An unknown backend name; the message lists the names that exist."""


class MissingExtra(AnomalensError):
    """A backend whose optional dependencies are not installed; the message names the pip command."""


class ModelStoreError(AnomalensError):
    """A model is unknown, absent, or failed verification (checksum, header) while being fetched."""


class WeightsNotFound(ModelStoreError):
    """Foundation-model weights that are not on this machine; names where it looked and how to provide them."""


class LLMError(AnomalensError):
    """An LLM backend failed: unreachable server, model cannot load, or output stayed malformed."""
