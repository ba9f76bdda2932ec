"""Any OpenAI-compatible chat server: vLLM serve, llama.cpp's server, Ollama, hosted APIs.

Base URL and key come from the arguments (``open_llm`` passes the settings' ``llm_base_url``/``llm_api_key``,
i.e. ``ANOMALENS_LLM_BASE_URL``/``ANOMALENS_LLM_API_KEY``), else the OpenAI client's ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY``. Tools use the server's native tool calling; frames go as image
parts when the model is multimodal. Reply schemas go as ``response_format``; servers spell it differently
(OpenAI, vLLM and llama.cpp's server take ``json_schema``; llama-cpp-python's server only ``json_object`` with
a schema), so a server that rejects one spelling gets the next, and the one it accepts is remembered.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from anomalens.agents.llm.base import LLM, ChatResult, Message, ToolCall, image_data_url
from anomalens.errors import LLMError


class OpenAICompatibleLLM(LLM):
    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        multimodal: bool = False,
        timeout: float = 60.0,
        retries: int = 0,
    ):
        """``timeout``: seconds one call may take; ``retries``: further tries after a failed call (each may take
        the timeout again: a server that hangs would hold every call that long)."""
        import openai

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise LLMError("openai backend: no base URL (pass base_url or set ANOMALENS_LLM_BASE_URL)")
        # Local servers accept any key; the client refuses to start without one.
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.model, self.base_url, self.multimodal, self.timeout = model, base_url, multimodal, timeout
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=retries)
        self._styles = ["json_schema", "json_object"]

    def _chat(self, messages, tools, choice, schema, max_tokens, temperature) -> ChatResult:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [self._wire(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            request["tools"] = [t.openai() for t in tools]
            # "auto" is OpenAI's default, but some servers (llama-cpp-python's) ignore tools unless it is sent.
            if choice in (None, "required"):
                request["tool_choice"] = choice or "auto"
            else:
                request["tool_choice"] = {"type": "function", "function": {"name": choice}}
        if not schema:
            return self._stream(request)
        while True:
            request["response_format"] = _response_format(self._styles[0], schema)
            try:
                return self._stream(request)
            except _Rejected as rejected:
                if len(self._styles) == 1:
                    raise LLMError(f"{self.base_url}: server rejected the reply schema: {rejected}") from None
                self._styles.pop(0)

    def _stream(self, request: dict[str, Any]) -> ChatResult:
        started = time.perf_counter()
        first_token: float | None = None
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage, chunks, answered = None, 0, False
        try:
            for chunk in self._client.chat.completions.create(**request):
                usage = chunk.usage or usage
                if not chunk.choices:
                    continue
                answered = True
                delta = chunk.choices[0].delta
                if delta.content or delta.tool_calls:
                    chunks += 1
                    first_token = first_token if first_token is not None else time.perf_counter() - started
                text.append(delta.content or "")
                for part in delta.tool_calls or []:
                    call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = part.id or call["id"]
                    if part.function:
                        # The name comes whole (some servers repeat it in every delta); arguments in pieces.
                        call["name"] = call["name"] or part.function.name or ""
                        call["arguments"] += part.function.arguments or ""
        except self._openai.APITimeoutError:
            raise LLMError(f"{self.base_url}: no answer within {self.timeout:g} s (ANOMALENS_LLM_TIMEOUT)") from None
        except self._openai.APIConnectionError as error:
            raise LLMError(f"{self.base_url}: cannot reach the LLM server ({error.__cause__ or error})") from None
        except self._openai.APIStatusError as error:
            # Servers reject an unknown spelling with 400/422, llama-cpp-python's with a 500 that names it.
            if "response_format" in request and (error.status_code in (400, 422) or "response_format" in error.message):
                raise _Rejected(error.message) from None
            raise LLMError(f"{self.base_url}: server answered {error.status_code}: {error.message}") from None
        if not answered:  # e.g. a web page or other JSON where the event stream of a chat completion belongs
            raise LLMError(f"{self.base_url}: the reply held no chat completion (is it an OpenAI-compatible server?)")
        return ChatResult(
            text="".join(text),
            tool_calls=[_tool_call(index, call) for index, call in sorted(calls.items())],
            prompt_tokens=usage.prompt_tokens if usage else None,
            # Without usage (llama-cpp-python's server streams none), count chunks: servers stream a token each.
            completion_tokens=usage.completion_tokens if usage else chunks,
            first_token_seconds=first_token,
        )

    def _wire(self, message: Message) -> dict[str, Any]:
        wire: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            if not self.multimodal:
                raise LLMError(f"{self.model} is configured text-only: pass frames through tools, not as images")
            wire["content"] = [{"type": "text", "text": message.content}] + [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in message.images
            ]
        if message.tool_calls:
            wire["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in message.tool_calls
            ]
        if message.role == "tool":
            wire["tool_call_id"] = message.tool_call_id
        return wire


class _Rejected(Exception):
    """The server refused the request's response_format spelling."""


def _response_format(style: str, schema: dict[str, Any]) -> dict[str, Any]:
    if style == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    return {"type": "json_object", "schema": schema}


def _tool_call(index: int, call: dict[str, Any]) -> ToolCall:
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except json.JSONDecodeError:
        # Left for the agent to send back as a tool error the model can fix.
        arguments = {"_unparsed": call["arguments"]}
    return ToolCall(id=call["id"] or f"call_{index}", name=call["name"], arguments=arguments)
