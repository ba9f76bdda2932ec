"""Structured output: ask for JSON matching a pydantic model, repair what can be repaired, retry the rest.

Each attempt's reply is parsed leniently (``extract_json``) and validated by pydantic. A reply that fails
goes back to the model with the validation error, a bounded number of times; then ``LLMError`` says which
model failed, how often, and the last error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from anomalens.agents.llm.base import (
    LLM,
    ChatResult,
    Message,
    extract_json,
    with_system,
)
from anomalens.errors import LLMError
from anomalens.prompts import load as load_prompts

T = TypeVar("T", bound=BaseModel)
DEFAULT_ATTEMPTS = 3


@dataclass
class Structured(Generic[T]):
    """A validated reply and what it cost to get it."""

    value: T
    attempts: int  # 1 = valid at the first try
    results: list[ChatResult] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return self.attempts > 1


def ask_structured(
    llm: LLM,
    messages: list[Message],
    model: type[T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    max_tokens: int = 512,
) -> Structured[T]:
    """Ask ``llm`` for a reply that validates as ``model``; retry with the error at most ``attempts`` times."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    schema = model.model_json_schema()
    text = load_prompts("llm")
    conversation = structured_messages(messages, model)
    results: list[ChatResult] = []
    error = ""
    for attempt in range(1, attempts + 1):
        result = llm.chat(conversation, schema=schema, max_tokens=max_tokens)
        results.append(result)
        try:
            return Structured(model.model_validate(extract_json(result.text)), attempt, results)
        except ValueError as problem:  # pydantic's ValidationError is a ValueError too
            error = problem_summary(problem)
        conversation += [
            Message(role="assistant", content=result.text),
            Message(role="user", content=text["json_retry"].format(error=error)),
        ]
    raise LLMError(
        f"{llm.backend}:{llm.model} gave no valid {model.__name__} in {attempts} attempt(s); last error: {error}"
    )


def structured_messages(messages: list[Message], model: type[BaseModel]) -> list[Message]:
    """``messages`` as ``ask_structured`` sends them: the reply format goes in the system turn, before the
    question, so calls that share it share a prompt prefix, which llama.cpp and vLLM reuse (``LLM.warm``)."""
    instruction = load_prompts("llm")["json_reply"].format(schema=json.dumps(model.model_json_schema()))
    return with_system(messages, instruction)


def problem_summary(problem: ValueError, whole: str = "reply", limit: int = 5) -> str:
    """One line for the model: each pydantic error as ``field.path: message`` (``whole`` when it is about the
    whole value), at most ``limit`` of them; other errors as they are."""
    if isinstance(problem, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in problem.errors()[:limit])
    return str(problem)
