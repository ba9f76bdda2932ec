"""llama.cpp in-process (llama-cpp-python): GGUF models on the CPU, the embedded default.

Replies with a schema, and tool turns (through the JSON reply protocol), are grammar-constrained, so
even a small model always produces parseable JSON.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from anomalens.agents.llm.base import (
    LLM,
    ChatResult,
    Message,
    ToolSpec,
    parse_protocol_reply,
    protocol_messages,
    protocol_schema,
)
from anomalens.errors import LLMError


class LlamaCppLLM(LLM):
    backend = "llamacpp"

    def __init__(self, model: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None, seed: int = 0):
        from llama_cpp import Llama

        from anomalens.modelstore import resolve

        path = resolve(model, fmt="gguf")
        self.model = str(model)
        try:
            self._llama = Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(), seed=seed, verbose=False
            )
        except ValueError as error:  # llama-cpp-python reports unloadable files as ValueError
            raise LLMError(f"{path}: llama.cpp could not load this model ({error})") from None

    @functools.lru_cache(maxsize=16)  # converting a schema takes a while; the agent reuses a few
    def _grammar(self, schema: str) -> Any:
        # Built here rather than through response_format, which silently falls back to any JSON when the
        # schema cannot be converted: a reply would then look constrained without being so.
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            return LlamaGrammar.from_json_schema(schema, verbose=False)
        except Exception as error:  # the converter raises assertion and value errors alike
            raise LLMError(f"llama.cpp cannot turn this reply schema into a grammar: {error}") from None

    def warm(
        self, messages: list[Message], tools: list[ToolSpec] | None = None, tool_choice: str | None = None
    ) -> None:
        """Evaluate ``messages`` (as a later call will render them) so their tokens stay in the context: the
        next prompt that starts the same way only computes what follows."""
        if tools:
            messages = protocol_messages(messages, tools, tool_choice)
        self._llama.create_chat_completion(messages=[_plain(m) for m in messages], max_tokens=1)

    def _chat(self, messages, tools, choice, schema, max_tokens, temperature) -> ChatResult:
        if any(m.images for m in messages):
            raise LLMError(f"{self.model} is a text-only model: pass frames through tools, not as images")
        if tools:
            messages, schema = protocol_messages(messages, tools, choice), protocol_schema(tools, choice)
        started = time.perf_counter()
        first_token: float | None = None
        pieces: list[str] = []
        stream = self._llama.create_chat_completion(
            messages=[_plain(m) for m in messages],
            max_tokens=max_tokens,
            temperature=temperature,
            grammar=self._grammar(json.dumps(schema, sort_keys=True)) if schema else None,
            stream=True,
        )
        finish = None
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                piece = choice["delta"].get("content")
                if piece:
                    first_token = first_token if first_token is not None else time.perf_counter() - started
                    pieces.append(piece)
        except ValueError as error:  # llama-cpp-python's way of saying the prompt does not fit the context
            raise LLMError(
                f"{self.model}: the conversation does not fit the context of {self._llama.n_ctx()} tokens with"
                f" {max_tokens} left for the reply (load with a larger n_ctx, or shorten it): {error}"
            ) from None
        text = "".join(pieces)
        completion = len(pieces)  # llama-cpp-python streams one chunk per generated token
        # The context now holds the prompt and every reply token that was fed back: all of them, except the
        # last when generation stopped at max_tokens (it was sampled, never evaluated).
        prompt = self._llama.n_tokens - completion + (finish == "length")
        result = parse_protocol_reply(text, tools) if tools else ChatResult(text=text)
        result.prompt_tokens, result.completion_tokens, result.first_token_seconds = prompt, completion, first_token
        return result


def _plain(message: Message) -> dict[str, Any]:
    return {"role": message.role, "content": message.content}
