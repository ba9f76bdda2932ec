"""Shared fixtures: the benchmark data folder and small synthetic scenes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$ANOMALENS_DATA_DIR``); skipped when absent, a failure under ``CI=true``."""
    path = Path(os.environ.get("ANOMALENS_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (path / "README.md").is_file():
        message = f"benchmark data not found at {path} (set ANOMALENS_DATA_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must have ../shared/data beside the checkout")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def walkway(tmp_path_factory):
    """A normal clip and a test clip with one of every anomaly kind, of the same place."""
    from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene

    root = tmp_path_factory.mktemp("walkway")
    normal = write_scene(SceneSpec(n_frames=240, seed=11, camera_seed=5), root / "normal")
    anomalies = (
        Anomaly("cyclist", 10),
        Anomaly("lawn_crossing", 70),
        Anomaly("wrong_way", 200),
        Anomaly("loitering", 300),
        Anomaly("crowd", 480),
        Anomaly("left_object", 560),
    )
    test = write_scene(SceneSpec(n_frames=800, seed=12, camera_seed=5, anomalies=anomalies), root / "test")
    return normal, test
