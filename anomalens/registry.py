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
