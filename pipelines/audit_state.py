"""What an audit keeps in its output folder so that a failure or a kill loses no work and a re-run resumes.

``OUT/.anomalens/screening.npz`` is written once screening ends; ``OUT/.anomalens/explanations.json`` after
each verified explanation. Both carry the fingerprint of the audit's inputs (``pipelines.fingerprint``): a
re-run whose fingerprint matches reuses them, anything else screens again. Each file is replaced atomically, so a
kill leaves either the previous version or the new one.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from anomalens.files import atomic_write
from anomalens.progress import say
from anomalens.tools.screening import ScreeningResult
from anomalens.types import Explanation

FOLDER = ".anomalens"
FORMAT = 3  # of the explanations file (the screening's is ``ScreeningResult``'s own)


class _Explanations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int
    fingerprint: str
    explainer: str  # who explained them: kept only for the same LLM
    explanations: list[Explanation]


class AuditState:
    """The kept work of the audit with ``fingerprint`` in the output folder ``out``."""

    def __init__(self, out: Path, fingerprint: str):
        self.out = Path(out)
        self.folder = self.out / FOLDER
        self.fingerprint = fingerprint
        self.screening_file = self.folder / "screening.npz"
        self.explanations_file = self.folder / "explanations.json"

    def screening(self) -> ScreeningResult | None:
        """The screening kept by an earlier run of this audit, or None (none kept, or of other inputs)."""
        if not self.screening_file.is_file():
            return None
        try:
            return ScreeningResult.load(self.screening_file, self.fingerprint)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # ValueError: a bad record too
            say(f"{self.screening_file}: unreadable; screening again")
            return None

    def keep_screening(self, result: ScreeningResult) -> None:
        """Keep a finished screening; explanations kept for an earlier screening no longer apply."""
        self.explanations_file.unlink(missing_ok=True)
        result.save(self.screening_file, self.fingerprint)

    def explanations(self, explainer: str) -> list[Explanation]:
        """The explanations ``explainer`` finished in an earlier run of this audit (none when another explained)."""
        if not self.explanations_file.is_file():
            return []
        try:
            record = _Explanations.model_validate_json(self.explanations_file.read_bytes())
        except (OSError, ValueError):
            say(f"{self.explanations_file}: unreadable; explaining every event again")
            return []
        if record.format_version != FORMAT or record.fingerprint != self.fingerprint:
            return []
        return record.explanations if record.explainer == explainer else []

    def keep_explanations(self, explainer: str, explanations: list[Explanation]) -> None:
        record = _Explanations(
            format_version=FORMAT, fingerprint=self.fingerprint, explainer=explainer, explanations=explanations
        )
        atomic_write(self.explanations_file, record.model_dump_json())
