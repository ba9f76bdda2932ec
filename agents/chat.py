"""Conversational querying of a video: questions answered by the agent over an index built once per video.

Answers are claims, verified like event explanations; the prose says only what was verified. A session's
memory (every question, answer and verdict) is kept by LangGraph's SQLite checkpointer, written after each
step of the graph, so a session resumes after a restart, or a crash, with nothing lost.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomalens.agents.graph import Agent, build_graph
from anomalens.agents.index import EvidenceBook, VideoIndex, handle
from anomalens.agents.llm import LLM
from anomalens.tools.perception import Perception
from anomalens.types import Explanation

RECURSION_LIMIT = 60  # graph steps per question: far above what the step budget allows


def new_session_id() -> str:
    return uuid.uuid4().hex[:8]


class ChatSession:
    """One conversation about one video. ``ask`` answers a question; ``history`` is every turn so far."""

    def __init__(
        self,
        index: VideoIndex,
        llm: LLM,
        database: str | Path,
        session: str | None = None,
        perception: Perception | None = None,
        namer: Callable[[str], str | None] | None = None,
    ):
        """``namer`` maps free text to a COCO class for the ``appears`` tool (default: ``coco.yaml``'s words)."""
        from langgraph.checkpoint.sqlite import SqliteSaver

        self.index = index
        self.session = session or new_session_id()
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(str(database), check_same_thread=False)
        self.agent = Agent(llm, index, chat=True, perception=perception, namer=namer)
        self.agent.warm()
        self.graph = build_graph(self.agent, SqliteSaver(self._connection))
        self.config = {"configurable": {"thread_id": self.session}, "recursion_limit": RECURSION_LIMIT}

    def ask(self, question: str) -> Explanation:
        if not question.strip():
            raise ValueError("ask a question (it was empty)")
        values = self.graph.invoke({"question": question.strip()}, self.config)
        return Explanation.model_validate(values["history"][-1]["explanation"])

    def record(self, question: str, answer: Explanation) -> dict[str, Any]:
        """One answer for scripts: its text, the query it was read as, every claim with its verdict and the
        handles it cites, and what it cost."""
        turn = self.history[-1]
        book = EvidenceBook(self.index, answer.evidence)

        def cites(claim) -> list[str]:
            return [handle(ev) if (ev := book.get(i)) is not None else i for i in claim.evidence_ids]

        claims = [
            {"kind": c.kind, "text": c.text, "verdict": c.verdict.status, "reason": c.verdict.reason, "cites": cites(c)}
            for c in answer.claims
        ]
        return {
            "session": self.session,
            "question": question,
            "answer": answer.prose or answer.note,
            "verified": bool(answer.supported),
            "query": turn.get("query"),
            "claims": claims,
            "llm_calls": answer.llm_calls,
            "seconds": round(answer.seconds, 3),
        }

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every turn: ``question``, ``answer`` (verified prose) and ``explanation`` (claims and verdicts)."""
        return list(self.graph.get_state(self.config).values.get("history", []))

    def close(self) -> None:
        self._connection.close()
