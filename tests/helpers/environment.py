"""What the tests find on this machine: the repository, and absences that skip a test (fail it under CI)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def absent(message: str, in_ci: str = "") -> None:
    """Skip the test for something missing here; under ``CI=true`` its absence is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(message + in_ci)
    pytest.skip(message)


def stored_model(name: str) -> Path:
    """A model from the local store; skipped when absent, a failure under ``CI=true`` (the README's set-up
    command pulls the models the tests use)."""
    from anomalens import modelstore

    if not modelstore.present(name):
        where = modelstore.location(name).parent
        absent(f"model {name!r} is not in the store ({where}): anomalens models pull {name}")
    return modelstore.location(name)
