"""LLM backends behind one small interface (``LLM.chat``), chosen by name through the registry."""

from __future__ import annotations

from typing import Any

from anomalens.agents.llm.base import LLM, ChatResult, Message, ToolCall, ToolSpec, tool_parameters
from anomalens.agents.llm.structured import Structured, ask_structured

__all__ = [
    "LLM",
    "ChatResult",
    "Message",
    "Structured",
    "ToolCall",
    "ToolSpec",
    "ask_structured",
    "open_llm",
    "tool_parameters",
]


def open_llm(backend: str | None = None, model: str | None = None, *, settings: Any = None, **options: Any) -> LLM:
    """The configured LLM (``Settings.llm``/``llm_model``, or the arguments), loaded on first use."""
    from anomalens import registry
    from anomalens.config import load_settings
    from anomalens.modelstore import resolve

    settings = settings or load_settings()
    backend = backend or settings.llm
    model = model or settings.llm_model
    cls = registry.load(f"llm:{backend}")
    if backend == "openai":
        options.setdefault("base_url", settings.llm_base_url)
        options.setdefault("api_key", settings.llm_api_key)
        options.setdefault("timeout", settings.llm_timeout)
        return cls(model, **options)
    if backend == "scripted":
        return cls(**options)
    llm = cls(resolve(model, root=settings.model_dir), **options)
    llm.model = model  # report the name the user chose, not the store path it resolved to
    return llm
