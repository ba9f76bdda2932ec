"""A backend that replays a script: for tests of everything that talks to an LLM, with no model at all."""

from __future__ import annotations

from typing import Any, Union

from anomalens.agents.llm.base import LLM, ChatResult, Message, ToolCall
from anomalens.errors import LLMError

# A script step is reply text, a list of tool calls, or a function of the conversation returning either.
Step = Union[str, list[ToolCall], Any]


class ScriptedLLM(LLM):
    """Replays ``script`` one step per ``chat`` call and records every call it received in ``calls``."""

    backend = "scripted"

    def __init__(self, script: list[Step], model: str = "script", multimodal: bool = False):
        self.script = list(script)
        self.model = model
        self.multimodal = multimodal
        self.calls: list[dict[str, Any]] = []

    def _chat(self, messages, tools, choice, schema, max_tokens, temperature) -> ChatResult:
        self.calls.append({"messages": list(messages), "tools": list(tools), "choice": choice, "schema": schema})
        if not self.script:
            raise LLMError(f"scripted LLM {self.model!r} ran out of replies after {len(self.calls) - 1} call(s)")
        step = self.script.pop(0)
        if callable(step):
            step = step(messages)
        if isinstance(step, str):
            return ChatResult(text=step, prompt_tokens=_words(messages), completion_tokens=len(step.split()))
        calls = [c if isinstance(c, ToolCall) else ToolCall(**c) for c in step]
        allowed = {t.name for t in tools if choice in (None, "required", t.name)}
        unknown = [c.name for c in calls if c.name not in allowed]
        if unknown:
            raise LLMError(f"script calls tools that were not offered or not allowed: {', '.join(unknown)}")
        return ChatResult(tool_calls=calls, prompt_tokens=_words(messages))


def _words(messages: list[Message]) -> int:
    return sum(len(m.content.split()) for m in messages)
