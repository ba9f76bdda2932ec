"""transformers in-process: a local model directory (or Hugging Face cache id) or a GGUF file.

GGUF files are dequantised by transformers on load (needs the ``gguf`` package), so a 1.5B Q4 model takes
about 6 GB of RAM in float32: llama.cpp is the faster way to run GGUFs; this path exists to run the same
weights as the rest of a transformers stack. On a GPU, accelerate places layers (``device_map="auto"``)
and bitsandbytes can load 4- or 8-bit weights. Multimodal models (image-text-to-text) get frames as images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from anomalens.agents.llm.base import (
    LLM,
    ChatResult,
    Message,
    image_array,
    parse_protocol_reply,
    protocol_messages,
)
from anomalens.errors import LLMError


class TransformersLLM(LLM):
    backend = "transformers"

    def __init__(
        self,
        model: str | Path,
        *,
        quantization: Literal[4, 8] | None = None,
        device_map: str | dict | None = None,
        dtype: str = "auto",
    ):
        import torch
        import transformers

        from anomalens.modelstore import resolve

        self.model = str(model)
        path = resolve(model)
        # Never download at run time: a name that is not a local path must already be in the HF cache.
        options: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
        if path.is_file():  # a GGUF file: transformers reads config, tokenizer and weights from it
            source, options["gguf_file"] = str(path.parent), path.name
        else:
            source = str(path)
        cuda = torch.cuda.is_available()
        if quantization is not None:
            if not cuda:
                raise LLMError(f"{self.model}: {quantization}-bit loading (bitsandbytes) needs a CUDA GPU; none found")
            options["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=quantization == 4, load_in_8bit=quantization == 8
            )
        if device_map is not None or cuda:
            options["device_map"] = device_map or "auto"  # accelerate spreads layers over GPUs and CPU
        files = {"gguf_file": options.get("gguf_file"), "local_files_only": True}
        try:
            config = transformers.AutoConfig.from_pretrained(source, **files)
            self.multimodal = type(config) in transformers.AutoModelForImageTextToText._model_mapping
            if self.multimodal:
                self._processor = transformers.AutoProcessor.from_pretrained(source, local_files_only=True)
                self._tokenizer = self._processor.tokenizer
                self._model = transformers.AutoModelForImageTextToText.from_pretrained(source, **options)
            else:
                self._processor = None
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(source, **files)
                self._model = transformers.AutoModelForCausalLM.from_pretrained(source, **options)
        except (OSError, ValueError) as error:
            where = (
                "" if path.exists() else " (not a local path, and not in the Hugging Face cache; nothing is downloaded)"
            )
            raise LLMError(
                f"{path}: transformers could not load this model{where}: {str(error).splitlines()[0]}"
            ) from None
        if (self._processor or self._tokenizer).chat_template is None:
            raise LLMError(f"{path}: the tokenizer has no chat template, so it is not a chat model")
        self._model.eval()

    def _chat(self, messages, tools, choice, schema, max_tokens, temperature) -> ChatResult:
        import torch

        images = [image for m in messages for image in m.images]
        if images and not self.multimodal:
            raise LLMError(f"{self.model} is a text-only model: pass frames through tools, not as images")
        if tools:
            messages = protocol_messages(messages, tools, choice)
        # No constrained decoding here: the reply schema is in the prompt and ask_structured validates/retries.
        inputs = self._inputs(messages, images).to(self._model.device)
        first = _FirstTokenClock()
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "logits_processor": [first]}
        options.update({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False})
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else self._tokenizer.eos_token_id
        with torch.inference_mode():
            output = self._model.generate(**inputs, pad_token_id=pad, **options)
        prompt_length = inputs["input_ids"].shape[1]
        generated = output[0, prompt_length:]
        text = self._tokenizer.decode(generated, skip_special_tokens=True)
        result = parse_protocol_reply(text, tools) if tools else ChatResult(text=text)
        result.prompt_tokens, result.completion_tokens = prompt_length, int(generated.shape[0])
        result.first_token_seconds = first.seconds
        return result

    def _inputs(self, messages: list[Message], images: list[Any]):
        if self._processor is not None:
            from PIL import Image

            turns = [
                {
                    "role": m.role,
                    "content": [{"type": "image"} for _ in m.images] + [{"type": "text", "text": m.content}],
                }
                for m in messages
            ]
            prompt = self._processor.apply_chat_template(turns, add_generation_prompt=True)
            pictures = [Image.fromarray(image_array(image)) for image in images] or None
            return self._processor(text=prompt, images=pictures, return_tensors="pt")
        turns = [{"role": m.role, "content": m.content} for m in messages]
        return self._tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )


class _FirstTokenClock:
    """A logits processor that notes when the first new token is about to be chosen (prefill finished)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: float | None = None

    def __call__(self, input_ids, scores):
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
        return scores
