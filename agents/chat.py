"""Conversational querying of a video: questions answered by the agent over an index built once per video.

Answers are claims, verified like event explanations; the prose says only what was verified. A session's
memory (every question, answer and verdict) is kept by LangGraph's SQLite checkpointer, written after each
step of the graph, so a session resumes after a restart, or a crash, with nothing lost.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from anomalens.agents.graph import Agent, build_graph
from anomalens.agents.index import EvidenceBook, VideoIndex, handle
from anomalens.agents.llm import LLM
from anomalens.errors import ConfigError
from anomalens.files import writable_folder
from anomalens.store import EventStore
from anomalens.tools.perception import Perception
from anomalens.types import Explanation
from anomalens.video import FrameReader

RECURSION_LIMIT = 60  # graph steps per question: far above what the step budget allows
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

SESSIONS_TABLE = "CREATE TABLE IF NOT EXISTS anomalens_sessions (id TEXT PRIMARY KEY, video TEXT)"


class _Unlocked:
    """An in-memory session: no other process can open it."""

    def release(self) -> None:
        pass


def new_session_id() -> str:
    return uuid.uuid4().hex[:8]


def checked_session_id(session: str) -> str:
    """``session`` if it can be a session id (it names a lock file: nothing that reads as a path)."""
    if not SESSION_ID.fullmatch(session):
        raise ConfigError(f"session {session!r}: letters, digits, '_' and '-' only, at most 64")
    return session


def check_sessions_database(database: Path) -> None:
    """Fail before any work when ``database`` cannot keep chat sessions: a file in the folder's way, a read-only
    folder, a file that is not a database."""
    writable_folder(database.parent, "chat sessions")
    if not database.exists():
        return
    try:
        with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=rw", uri=True)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except (OSError, sqlite3.Error) as error:
        raise _cannot_keep_sessions(database, error) from None


def _cannot_keep_sessions(where: str | Path, error: Exception) -> ConfigError:
    said = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return ConfigError(f"{where}: cannot keep chat sessions there ({said}); move it aside or set ANOMALENS_CHAT_DIR")


class ChatSession:
    """One conversation about one video. ``ask`` answers a question; ``history`` is every turn so far."""

    def __init__(
        self,
        index: VideoIndex,
        llm: LLM,
        database: str | Path,
        session: str | None = None,
        perception: Perception | None = None,
        frames: FrameReader | None = None,
        namer: Callable[[str], str | None] | None = None,
        store: EventStore | None = None,
    ):
        """``perception`` and the video's ``frames``: what the live tools look with and at; ``namer`` maps free text
        to a COCO class for the ``appears`` tool (default: ``coco.yaml``'s words); ``store``: the event store that
        keeps every answer beside the events (``anomalens serve`` shows them)."""
        from langgraph.checkpoint.sqlite import SqliteSaver

        self.index, self.store = index, store
        self.session = checked_session_id(session) if session else new_session_id()
        self._lock = self._only_open_here(database)
        try:
            self._connection = sqlite3.connect(str(database), check_same_thread=False)
            about = self._video_of_session()
        except (OSError, sqlite3.Error) as error:
            self._lock.release()
            raise _cannot_keep_sessions(database, error) from None
        if about != index.video:  # resumed on another video, it would show that video's turns as history
            self.close()
            raise ConfigError(f"session {self.session} is about {about}, not {index.video}: start a new session")
        self.agent = Agent(llm, index, chat=True, perception=perception, frames=frames, namer=namer)
        self.agent.warm()
        self.graph = build_graph(self.agent, SqliteSaver(self._connection))
        self.config = {"configurable": {"thread_id": self.session}, "recursion_limit": RECURSION_LIMIT}

    def _only_open_here(self, database: str | Path) -> FileLock | _Unlocked:
        """One process at a time per session: two writing it would each keep only their own turns."""
        if str(database) == ":memory:":
            return _Unlocked()
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(Path(database).parent / f".session-{self.session}.lock")
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(
                f"session {self.session} is open in another chat: end that one, or start a new session"
            ) from None
        except OSError as error:
            raise _cannot_keep_sessions(Path(database).parent, error) from None
        return lock

    def _video_of_session(self) -> str:
        """The video this session is about (recorded at its first opening)."""
        with self._connection:
            db = self._connection
            db.execute(SESSIONS_TABLE)
            db.execute("INSERT OR IGNORE INTO anomalens_sessions VALUES (?, ?)", (self.session, self.index.video))
            return db.execute("SELECT video FROM anomalens_sessions WHERE id = ?", (self.session,)).fetchone()[0]

    def ask(self, question: str) -> Explanation:
        if not question.strip():
            raise ValueError("ask a question (it was empty)")
        values = self.graph.invoke({"question": question.strip()}, self.config)
        answer = Explanation.model_validate(values["history"][-1]["explanation"])
        if self.store is not None:
            claims = [{"text": c.text, "kind": c.kind, "status": c.verdict.status if c.verdict else "unchecked"}
                      for c in answer.claims]  # fmt: skip
            self.store.add_answer(self.session, question.strip(), answer.answer_text, claims)
        return answer

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
            "answer": answer.answer_text,
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
        self._lock.release()
