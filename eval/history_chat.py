"""``anomalens eval history-chat``: seconds per answer of the chat over the event history, for questions the
router's words settle and for questions the LLM has to read (side by side, in one run, on the same store)."""

from __future__ import annotations

import statistics

from anomalens.agents.history import HistoryChat
from anomalens.agents.llm import LLM
from anomalens.errors import ConfigError
from anomalens.progress import track
from anomalens.store import EventStore

ROUTED = (
    "anything unusual today?", "which rules were broken?", "how many people this week?",
    "anything unusual while I was away?", "what happened in event 1?",
)  # fmt: skip
READ_BY_THE_LLM = (
    "show me the moments when something looked off", "did the cameras catch anything worth a look?",
    "list the alerts please", "tell me what the system flagged", "was there trouble with object sizes?",
    "give me the highlights",
)  # fmt: skip


def run_history_chat_speed(store: EventStore, llm: LLM, progress: bool = True) -> dict:
    """Each question asked once; the seconds of each answer, its query and how many claims were verified."""
    if not store.events():
        raise ConfigError(f"{store.path}: no stored events to ask about (run `anomalens demo` first)")
    chat = HistoryChat(store, llm)
    asked = []
    questions = [*ROUTED, *READ_BY_THE_LLM]
    for question in track(questions, "asking", total=len(questions), enabled=progress):
        answer = chat.ask(question)
        asked.append({  # the words settled it when the LLM was not called
            "question": question, "routed": answer.llm_calls == 0, "seconds": answer.seconds,
            "llm_calls": answer.llm_calls,
            "query": answer.query.model_dump(exclude_none=True),
            "verified": sum(c.status == "supported" for c in answer.claims), "claims": len(answer.claims),
        })  # fmt: skip

    def summary(rows: list[dict]) -> dict:
        seconds = [r["seconds"] for r in rows]
        return {"questions": len(rows), "median_s": round(statistics.median(seconds), 3), "max_s": max(seconds)}

    return {
        "llm": f"{llm.backend}:{llm.model}",
        "routed": summary([r for r in asked if r["routed"]]),
        "read_by_the_llm": summary([r for r in asked if not r["routed"]]),
        "answers": asked,
    }
