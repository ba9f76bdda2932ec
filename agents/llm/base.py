"""The one small interface every LLM backend implements, and the types that cross it.

A backend turns ``messages`` (+ optional images, tool schemas and a JSON schema for the reply) into a
``ChatResult``: text, tool calls, token counts and latency. Backends that cannot call tools natively
(in-process models) use one JSON reply protocol, described to the model by ``prompts/llm.yaml`` and
parsed by ``parse_protocol_reply``, so every backend hands the agent the same ``ToolCall`` objects.
"""

from __future__ import annotations

import base64
import json
import re
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anomalens.errors import LLMError
from anomalens.prompts import load as load_prompts

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Message(BaseModel):
    """One chat turn. ``images`` are file paths or RGB uint8 arrays (H, W, 3), sent to multimodal models only."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    role: Role
    content: str = ""
    images: list[Any] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)  # what an assistant turn asked for
    tool_call_id: str | None = None  # which call a tool turn answers
    name: str | None = None  # the tool's name on a tool turn


class ToolSpec(BaseModel):
    """A tool the model may call: its name, what it does, and a JSON schema of its arguments."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": self.model_dump()}


def tool_parameters(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, self-contained (references inlined), without titles, null defaults and pydantic's
    discriminator mappings (they point into the ``$defs`` that are inlined): a tool's
    schema is embedded in larger ones (the reply protocol's), where ``$defs`` would not resolve, and the model
    reads it, where every token costs time."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def clean(node: Any, names: bool = False) -> Any:  # names: ``node`` maps property names to schemas
        if isinstance(node, dict):
            if "$ref" in node and not names:
                return clean(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {
                k: clean(v, names=(k == "properties" and not names)) for k, v in node.items()
                if names or not (k in ("title", "discriminator") or (k == "default" and v is None))
            }
        if isinstance(node, list):
            return [clean(item) for item in node]
        return node

    return clean(schema)


class ChatResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    prompt_tokens: int | None = None  # None when a server does not report it
    completion_tokens: int = 0
    seconds: float = 0.0  # wall time of the whole call
    first_token_seconds: float | None = None  # time to first generated token, when the backend can tell
    backend: str = ""
    model: str = ""

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed after the first token (decode only), when time-to-first-token is known."""
        if self.first_token_seconds is None or self.completion_tokens < 2:
            return None
        decode = self.seconds - self.first_token_seconds
        return (self.completion_tokens - 1) / decode if decode > 0 else None


class LLM(ABC):
    """A chat model. Subclasses set ``backend`` and ``model`` and implement ``_chat``."""

    backend: str = ""
    model: str = ""
    multimodal: bool = False

    def chat(
        self,
        messages: list[Message],
        *,
        tools: list[ToolSpec] | None = None,
        tool_choice: str | None = None,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
    ) -> ChatResult:
        """Answer ``messages``; with ``schema`` the reply text is JSON meant to match it (validate it with
        ``ask_structured``); with ``tools`` the model may answer with ``tool_calls`` instead of text, and with
        ``tool_choice`` (a tool's name) it must call that tool, or with ``"required"`` one of them."""
        if not messages:
            raise LLMError(f"{self.backend}:{self.model}: chat needs at least one message")
        if tools and schema:
            raise LLMError("pass tools or a reply schema, not both: a tool call is itself a structured reply")
        tools = tools or []
        if tool_choice not in (None, "required", *(t.name for t in tools)):
            raise LLMError(f"tool_choice {tool_choice!r} is not among the tools offered")
        started = time.perf_counter()
        result = self._chat(messages, tools, tool_choice, schema, max_tokens, temperature)
        result.seconds = time.perf_counter() - started
        result.backend, result.model = self.backend, self.model
        return result

    def warm(
        self, messages: list[Message], tools: list[ToolSpec] | None = None, tool_choice: str | None = None
    ) -> None:
        """Precompute the prompt prefix that later calls with these ``tools`` and ``tool_choice`` will share;
        backends that keep no cache do nothing."""

    @abstractmethod
    def _chat(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        choice: str | None,  # None: may answer in text; "required": must call a tool; a name: must call it
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
    ) -> ChatResult: ...


# --- images -------------------------------------------------------------------------------------------


def image_array(image: Any) -> np.ndarray:
    """An RGB uint8 array from a file path or an array (grey arrays become RGB)."""
    import cv2

    if isinstance(image, (str, Path)):
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise LLMError(f"{image}: not a readable image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise LLMError(f"image must be a path or a uint8 (H, W[, 3]) array, got {array.dtype} {array.shape}")
    return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array


def image_data_url(image: Any) -> str:
    """A ``data:image/png;base64`` URL for a file path or an RGB uint8 array."""
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(image_array(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise LLMError("could not encode image as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


# --- the JSON reply protocol for backends without native tool calling -------------------------------

MAX_PROTOCOL_CALLS = 2  # tool calls per reply: small models otherwise repeat one call until max_tokens


def protocol_schema(tools: list[ToolSpec], choice: str | None = None) -> dict[str, Any]:
    """JSON schema of a reply that calls tools (only ``choice``, when it names one) or, when ``choice`` is
    None, answers in text: constrained decoders enforce it."""
    callable_tools = [t for t in tools if choice in (None, "required", t.name)]
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for tool in callable_tools
        ]
    }
    calls = {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1, "maxItems": MAX_PROTOCOL_CALLS}},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if choice is not None:
        return calls
    answer = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    return {"anyOf": [calls, answer]}


def protocol_messages(messages: list[Message], tools: list[ToolSpec], choice: str | None = None) -> list[Message]:
    """``messages`` with the tools described in the system turn and tool traffic written as plain turns.

    Every tool is described whatever ``choice`` allows (the schema narrows the reply), so calls that offer
    the same tools share their prompt prefix; a text answer is offered only when ``choice`` is None."""
    text = load_prompts("llm")
    catalogue = "\n".join(
        f"- {t.name}: {t.description} Arguments (JSON schema): {json.dumps(t.parameters)}" for t in tools
    )
    answer = "" if choice is not None else text["tools_answer"] + "\n"
    instructions = text["tools"].format(tools=catalogue, answer=answer)
    rendered: list[Message] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            calls = [{"name": c.name, "arguments": c.arguments} for c in message.tool_calls]
            rendered.append(Message(role="assistant", content=json.dumps({"tool_calls": calls})))
        elif message.role == "tool":
            rendered.append(
                Message(role="user", content=text["tool_result"].format(name=message.name, result=message.content))
            )
        else:
            rendered.append(message)
    return with_system(rendered, instructions)


def with_system(messages: list[Message], instructions: str) -> list[Message]:
    """``messages`` with ``instructions`` appended to the system turn (one is added first if there is none)."""
    if messages and messages[0].role == "system":
        first = messages[0].model_copy(update={"content": messages[0].content + "\n\n" + instructions})
        return [first, *messages[1:]]
    return [Message(role="system", content=instructions), *messages]


def parse_protocol_reply(text: str, tools: list[ToolSpec]) -> ChatResult:
    """Read a protocol reply; text that is not a well-formed tool call comes back as the answer text."""
    try:
        reply = extract_json(text)
    except ValueError:
        return ChatResult(text=text)
    known = {t.name for t in tools}
    if isinstance(reply, dict) and isinstance(reply.get("tool_calls"), list):
        calls = []
        for index, call in enumerate(reply["tool_calls"]):
            if not isinstance(call, dict) or call.get("name") not in known:
                return ChatResult(text=text)
            arguments = call.get("arguments") or {}
            if not isinstance(arguments, dict):
                return ChatResult(text=text)
            calls.append(ToolCall(id=f"call_{index}", name=call["name"], arguments=arguments))
        return ChatResult(tool_calls=calls)
    if isinstance(reply, dict) and isinstance(reply.get("answer"), str):
        return ChatResult(text=reply["answer"])
    return ChatResult(text=text)


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def extract_json(text: str) -> Any:
    """The JSON value in a model's reply: a code fence's body or the first balanced ``{...}``/``[...]``,
    with the slips small models make repaired (trailing commas, Python's True/False/None)."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start >= 0:
        candidates.append(_balanced(text, start))
    for candidate in candidates:
        for attempt in (candidate, _repair(candidate)):
            try:
                return json.loads(attempt, strict=False)  # strict=False: raw newlines inside strings
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON value found in the reply")


def _balanced(text: str, start: int) -> str:
    """``text`` from ``start`` to the bracket that closes it (or to the end), skipping brackets in strings."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return text[start:]


def _repair(candidate: str) -> str:
    fixed = _TRAILING_COMMA.sub(r"\1", candidate)
    return re.sub(r"\b(True|False|None)\b", lambda m: {"True": "true", "False": "false", "None": "null"}[m[1]], fixed)
