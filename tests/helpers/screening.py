"""A frame scorer whose scores the test gives, for tests of how screening turns scores into events."""

from collections.abc import Sequence

from anomalens.types import Evidence, EvidenceKind, Measurement, MeasurementKind, Source


class ScriptedScorer:
    """Scores frame ``k`` ``scores[k]``; ``broken``: the rule frame ``k`` breaks (at twice its limit)."""

    def __init__(self, scores: Sequence[float], broken: dict[int, str] | None = None, frame_size=(32, 24)):
        self.scores, self.broken, self.frame_size = scores, broken or {}, frame_size

    def score(self, frame) -> Evidence:
        breaches = [self.broken[frame.index]] if frame.index in self.broken else []
        return Evidence(
            kind=EvidenceKind.FRAME, source=Source(tool="scripted"), frame_index=frame.index,
            frame_size=self.frame_size, frame_score=float(self.scores[frame.index]),
            measurements=[Measurement(kind=MeasurementKind.RULE_SEVERITY, name=rule, value=2.0, unit="ratio")
                          for rule in breaches],
        )  # fmt: skip

    def tracks(self) -> list:
        return []
