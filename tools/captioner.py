"""Frame and crop descriptions from a VLM: in-process through transformers, or from any OpenAI-compatible server
(vLLM, llama.cpp's server, hosted APIs) as a vision message. Replayed captions (``tools.captions``) answer the
same ``caption`` call from a file.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from anomalens.errors import AnomalensError, ModelStoreError
from anomalens.prompts import load as load_prompts
from anomalens.tools.vision import device, jpeg_data_url, rgb
from anomalens.types import Evidence, EvidenceKind, Source
from anomalens.weights import resolve

MAX_NEW_TOKENS = 60


def _caption_evidence(backend: str, weights: str, text: str, started: float, frame_index: int | None, fps):
    return Evidence(
        kind=EvidenceKind.CAPTION,
        source=Source(tool="caption", backend=backend, weights=weights, latency_s=time.perf_counter() - started),
        frame_index=frame_index,
        time_s=frame_index / fps if fps and frame_index is not None else None,
        text=" ".join(text.split()),
    )


class TransformersCaptioner:
    """A VLM folder (SmolVLM, Qwen2-VL, LLaVA, ...) through ``AutoModelForImageTextToText`` and its processor's
    chat template."""

    backend = "transformers"

    def __init__(self, model, processor, weights: str, device_name: str, fps: float | None = None):
        self.model, self.processor, self.weights, self.device, self.fps = model, processor, weights, device_name, fps

    @classmethod
    def load(cls, weights: str | Path | None = None, device_name: str | None = None) -> TransformersCaptioner:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = resolve(weights, "captioner:transformers")
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ModelStoreError(f"{path}: cannot load a vision-language model: {error}") from None
        chosen = device(device_name)
        return cls(model.to(chosen).eval(), processor, str(path), chosen)

    def caption(
        self,
        image: np.ndarray,
        frame_index: int | None = None,
        prompt: str | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> Evidence:
        import torch

        started = time.perf_counter()
        question = prompt or load_prompts("captioner")["prompt"]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=[rgb(image)], text=[text], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = self.processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        return _caption_evidence(self.backend, Path(self.weights).name, answer, started, frame_index, self.fps)


class OpenAICaptioner:
    """A vision model behind an OpenAI-compatible server; the frame goes as a JPEG ``image_url`` part."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        fps: float | None = None,
    ):
        import os

        import openai

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise AnomalensError(
                "openai captioner: no base URL (set ANOMALENS_CAPTIONER_BASE_URL, or OPENAI_BASE_URL, or pass base_url)"
            )
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
            timeout=timeout,
            max_retries=1,
        )
        self.model, self.base_url, self.fps = model, base_url, fps

    def caption(
        self,
        image: np.ndarray,
        frame_index: int | None = None,
        prompt: str | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> Evidence:
        import openai

        started = time.perf_counter()
        content = [
            {"type": "text", "text": prompt or load_prompts("captioner")["prompt"]},
            {"type": "image_url", "image_url": {"url": jpeg_data_url(image)}},
        ]
        try:
            reply = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": content}],
                max_tokens=max_new_tokens,
                temperature=0,
            )
        except openai.OpenAIError as error:
            raise AnomalensError(f"openai captioner at {self.base_url}: {error}") from None
        text = reply.choices[0].message.content or ""
        return _caption_evidence(self.backend, self.model, text, started, frame_index, self.fps)
