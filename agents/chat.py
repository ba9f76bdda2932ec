"""Conversational querying of a video: questions answered by the agent over an index built once per video.

Answers are claims, verified like event explanations; the prose says only what was verified. A session's
memory (every question, answer and verdict) is kept by LangGraph's SQLite checkpointer, written after each
step of the graph, so a session resumes after a restart, or a crash, with nothing lost.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from anomalens.agents.graph import Agent, build_graph
from anomalens.agents.index import VideoIndex, index_from_screening
from anomalens.agents.llm import LLM
from anomalens.agents.perception import Perception
from anomalens.errors import MediaError
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
    ):
        from langgraph.checkpoint.sqlite import SqliteSaver

        self.index = index
        self.session = session or new_session_id()
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(str(database), check_same_thread=False)
        self.agent = Agent(llm, index, chat=True, perception=perception)
        self.agent.warm()
        self.graph = build_graph(self.agent, SqliteSaver(self._connection))
        self.config = {"configurable": {"thread_id": self.session}, "recursion_limit": RECURSION_LIMIT}

    def ask(self, question: str) -> Explanation:
        if not question.strip():
            raise ValueError("ask a question (it was empty)")
        values = self.graph.invoke({"question": question.strip()}, self.config)
        return Explanation.model_validate(values["history"][-1]["explanation"])

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every turn: ``question``, ``answer`` (verified prose) and ``explanation`` (claims and verdicts)."""
        return list(self.graph.get_state(self.config).values.get("history", []))

    def close(self) -> None:
        self._connection.close()


def video_index(
    video: str | Path,
    *,
    scene_dir: str | Path | None = None,
    captions: str | Path | None = None,
    cache_dir: str | Path,
    fps: float | None = None,
    progress: bool = True,
) -> VideoIndex:
    """The index of ``video``: read from ``cache_dir`` when this video (same bytes on disk), scene and
    captions were indexed before, else built by screening it once (every frame's compact evidence kept).

    Without a scene, the video's own dominant behaviour is learned as normal (self-referenced normality).
    """
    from anomalens.agents.screening import screen
    from anomalens.tools.rule_induction import SELF_REFERENCED_CONTAMINATION
    from anomalens.tools.scene import Scene, SceneScorer, learn_scene

    path = Path(video)
    key = hashlib.sha1(f"fps={fps}".encode())
    for part in (path, Path(scene_dir) / "rules.yaml" if scene_dir else None, Path(captions) if captions else None):
        if part is None:
            continue
        if not part.exists():
            raise MediaError(part, "not found")
        stat = part.stat()  # an edited rulebook or caption file, or a replaced video, means a new index
        key.update(f"|{part.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    cached = Path(cache_dir) / f"index-{key.hexdigest()[:16]}.json"
    if cached.is_file():
        return VideoIndex.load(cached)
    if scene_dir:
        scene = Scene.load(scene_dir)
    else:
        scene = learn_scene([str(path)], fps=fps, contamination=SELF_REFERENCED_CONTAMINATION, progress=progress)
    source = scene.open(path, fps=fps)
    scorer = SceneScorer(scene, source.fps)
    result = screen(source, scorer, self_referenced=not scene_dir, rulebook=scene.rulebook, progress=progress)
    index = index_from_screening(
        result, tracks=scorer.analyzer.tracks(), rulebook=scene.rulebook, captions_file=captions, every_frame=True
    )
    index.save(cached)
    return index
