"""The records events and explanations go out as: ``watch``'s JSON lines, its webhook and MQTT messages, and an
audit's MQTT messages. One shape each, built here."""

from __future__ import annotations

import datetime
from typing import Literal

from anomalens.types import Event, Explanation


def now() -> str:
    """The wall-clock time a record is sent, ISO 8601 in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def event_record(source: str, event: Event, state: Literal["started", "closed"], **fields) -> dict:
    """An event of ``source``: as soon as it is sure to be one (``started``), and once it ended (``closed``, with
    its ``headline``); ``fields`` such as ``latency_s``."""
    return {"type": "event", "state": state, "source": source, **fields, "event": event.model_dump(mode="json"),
            "at": now()}  # fmt: skip


def explanation_record(source: str, event_id: str, explanation: Explanation) -> dict:
    """An event's verified explanation: its headline, prose and every claim with its verdict."""
    claims = [{"kind": c.kind, "text": c.text, "verdict": c.verdict.status} for c in explanation.claims]
    return {"type": "explanation", "source": source, "event_id": event_id, "headline": explanation.headline,
            "prose": explanation.prose, "claims": claims, "seconds": round(explanation.seconds, 2),
            "at": now()}  # fmt: skip


def skipped_record(source: str, event_id: str, why: str) -> dict:
    """An event whose explanation will not come, and why."""
    return {"type": "explanation", "source": source, "event_id": event_id, "skipped": why, "at": now()}
