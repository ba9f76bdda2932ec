"""Copies of an audit for tests that change it: its scene folder and report, indexed into a store of their own."""

import json
import shutil
from pathlib import Path

from anomalens.pipelines.history import index_reports
from anomalens.store import EventStore


def stored_copy(audited: Path, into: Path) -> tuple[EventStore, Path]:
    """The audit under ``audited`` (``scene/`` and ``out/``, as the ``audited_walkway`` fixture writes them)
    copied to ``into`` and indexed into a fresh store there: a test may change the rulebook, the report and the
    store. Returns the store and the copied scene folder."""
    shutil.copytree(audited / "scene", into / "scene")
    shutil.copytree(audited / "out", into / "out")
    report = into / "out" / "report.json"
    record = json.loads(report.read_text(encoding="utf-8"))
    record["scene"] = str((into / "scene").resolve())  # the copy's scene, whose rulebook a review may change
    report.write_text(json.dumps(record), encoding="utf-8")
    store = EventStore(into / "store")
    index_reports([into / "out"], store, progress=False)
    return store, into / "scene"
