"""vLLM in-process: batched GPU inference. Optional extra; on a machine without a GPU (or where vLLM fails
to import) it says so and points at the OpenAI-compatible backend, which reaches a ``vllm serve`` anywhere."""

from __future__ import annotations

from pathlib import Path

from anomalens.agents.llm.base import (
    LLM,
    ChatResult,
    image_data_url,
    parse_protocol_reply,
    protocol_messages,
    protocol_schema,
)
from anomalens.errors import LLMError

FALLBACK = (
    "run `vllm serve MODEL` on a GPU machine and set ANOMALENS_LLM=openai and ANOMALENS_LLM_BASE_URL to it;"
    " on a CPU use ANOMALENS_LLM=llamacpp"
)


class VLLMLocalLLM(LLM):
    backend = "vllm"

    def __init__(
        self,
        model: str | Path,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        multimodal: bool = False,
    ):
        try:
            import torch
            import vllm
        except Exception as error:  # vLLM's import can fail in many ways off a GPU machine
            raise LLMError(
                f"vllm in-process backend unavailable ({type(error).__name__}: {error}); {FALLBACK}"
            ) from None
        if not torch.cuda.is_available():
            raise LLMError(f"vllm in-process backend needs a CUDA GPU and none was found; {FALLBACK}")
        from anomalens.modelstore import resolve

        self.model, self.multimodal = str(model), multimodal
        self._vllm = vllm
        self._engine = vllm.LLM(
            model=str(resolve(model)),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )

    def _chat(self, messages, tools, choice, schema, max_tokens, temperature) -> ChatResult:
        from vllm.sampling_params import StructuredOutputsParams

        if any(m.images for m in messages) and not self.multimodal:
            raise LLMError(f"{self.model} is configured text-only: pass frames through tools, not as images")
        if tools:
            messages, schema = protocol_messages(messages, tools, choice), protocol_schema(tools, choice)
        params = self._vllm.SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            structured_outputs=StructuredOutputsParams(json=schema) if schema else None,
        )
        wire = [
            {
                "role": m.role,
                "content": [{"type": "text", "text": m.content}]
                + [{"type": "image_url", "image_url": {"url": image_data_url(i)}} for i in m.images],
            }
            for m in messages
        ]
        output = self._engine.chat(wire, params, use_tqdm=False)[0]
        metrics = getattr(output, "metrics", None)
        first = getattr(metrics, "first_token_time", None)
        completion = output.outputs[0]
        text = completion.text
        result = parse_protocol_reply(text, tools) if tools else ChatResult(text=text)
        result.prompt_tokens, result.completion_tokens = len(output.prompt_token_ids), len(completion.token_ids)
        result.first_token_seconds = (first - getattr(metrics, "arrival_time", first)) if first else None
        return result
