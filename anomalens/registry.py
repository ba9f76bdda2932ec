"""Backends by name (``"kind:name"`` -> ``"module:attribute"``), imported only when first used.

Registering costs nothing: the module named in an entry is imported by ``load``. Unknown names list what
exists; a backend whose optional dependencies are missing names the ``pip install`` that adds them.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from anomalens.errors import BackendNotFound, MissingExtra


@dataclass(frozen=True)
class Backend:
    name: str  # "kind:name", e.g. "scorer:scene"
    target: str  # "module:attribute"
    requires: tuple[str, ...] = ()  # importable top-level modules it needs
    extra: str | None = None  # the pip extra that provides them
    summary: str = ""

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    def missing(self) -> list[str]:
        """Required modules that are not installed (checked without importing them)."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "scorer:scene",
            "anomalens.tools.scene:SceneScorer",
            summary="scene-trained motion (background, DIS flow, tracks) checked against the induced rulebook",
        ),
        Backend(
            "clip:transformers",
            "anomalens.tools.clip:TransformersClip",
            requires=("torch", "transformers"),
            extra="hf",
            summary="CLIP and SigLIP through transformers: zero-shot scores, WinCLIP maps, text scores, retrieval",
        ),
        Backend(
            "clip:open_clip",
            "anomalens.tools.clip:OpenClip",
            requires=("torch", "open_clip"),
            extra="clip",
            summary="OpenCLIP models (open_clip's local-dir layout)",
        ),
        Backend(
            "detector:grounding-dino",
            "anomalens.tools.detector:GroundingDinoDetector",
            requires=("torch", "transformers"),
            extra="hf",
            summary="open-vocabulary boxes from text prompts: Grounding DINO through transformers",
        ),
        Backend(
            "detector:owlv2",
            "anomalens.tools.detector:Owlv2Detector",
            requires=("torch", "transformers"),
            extra="hf",
            summary="open-vocabulary boxes from text prompts: OWLv2 through transformers",
        ),
        Backend(
            "detector:groundingdino-py",
            "anomalens.tools.detector:GroundingDinoPyDetector",
            requires=("torch", "groundingdino"),
            extra="groundingdino",
            summary="the original Grounding DINO package (needs transformers<5: its own environment; untested)",
        ),
        Backend(
            "segmenter:sam",
            "anomalens.tools.segmenter:SamSegmenter",
            requires=("torch", "transformers"),
            extra="hf",
            summary="Segment Anything through transformers: box/point prompts -> masks, one embedding per frame",
        ),
        Backend(
            "segmenter:segment-anything",
            "anomalens.tools.segmenter:SegmentAnythingSegmenter",
            requires=("torch", "segment_anything"),
            extra="sam",
            summary="Segment Anything through the original segment-anything package",
        ),
        Backend(
            "captioner:transformers",
            "anomalens.tools.captioner:TransformersCaptioner",
            requires=("torch", "transformers"),
            extra="hf",
            summary="frame/crop captions from a VLM folder (SmolVLM, Qwen2-VL, LLaVA) through transformers",
        ),
        Backend(
            "captioner:openai",
            "anomalens.tools.captioner:OpenAICaptioner",
            requires=("openai",),
            extra="openai",
            summary="frame/crop captions from a vision model behind an OpenAI-compatible server",
        ),
        Backend(
            "captioner:replay",
            "anomalens.tools.captions:ReplayedCaptions",
            summary="captions computed once and replayed from a text or JSONL file",
        ),
        Backend(
            "llm:llamacpp",
            "anomalens.agents.llm.llamacpp:LlamaCppLLM",
            requires=("llama_cpp",),
            extra="llamacpp",
            summary="GGUF models in-process on the CPU (llama-cpp-python), grammar-constrained JSON; the embedded default",
        ),
        Backend(
            "llm:openai",
            "anomalens.agents.llm.openai_http:OpenAICompatibleLLM",
            requires=("openai",),
            extra="openai",
            summary="any OpenAI-compatible server: vLLM serve, llama.cpp server, Ollama, hosted APIs",
        ),
        Backend(
            "llm:transformers",
            "anomalens.agents.llm.hf:TransformersLLM",
            requires=("torch", "transformers"),
            extra="hf",
            summary="transformers in-process: model folder or GGUF file; accelerate/bitsandbytes on GPU",
        ),
        Backend(
            "llm:vllm",
            "anomalens.agents.llm.vllm_local:VLLMLocalLLM",
            requires=("vllm",),
            extra="vllm",
            summary="vLLM in-process (CUDA GPU only)",
        ),
        Backend(
            "llm:scripted",
            "anomalens.agents.llm.scripted:ScriptedLLM",
            summary="replays a script of replies and tool calls (tests)",
        ),
    )
}


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        kind = name.split(":", 1)[0]
        same_kind = [n for n in BACKENDS if n.startswith(kind + ":")]
        known = same_kind or list(BACKENDS)
        raise BackendNotFound(f"unknown backend {name!r}; available: {', '.join(sorted(known))}") from None


def load(name: str) -> Any:
    """Import and return the class or function registered under ``name``."""
    backend = get(name)
    missing = backend.missing()
    if missing:
        install = f"pip install 'anomalens[{backend.extra}]'" if backend.extra else f"pip install {' '.join(missing)}"
        raise MissingExtra(f"backend {name!r} needs {', '.join(missing)}: {install}")
    module, attribute = backend.target.split(":")
    return getattr(importlib.import_module(module), attribute)
