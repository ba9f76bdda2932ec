"""Typed configuration: defaults < config file (TOML) < environment variables < explicit arguments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anomalens.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "ANOMALENS_"


class Settings(BaseModel):
    """Where things live and how much work to do by default."""

    model_config = ConfigDict(extra="forbid")
    data_dir: Path = Field(default=Path("../shared/data"), description="benchmark data (read-only)")
    model_dir: Path = Field(
        default=Path("~/.cache/anomalens/models").expanduser(), description="local model store"
    )
    max_side: int = Field(default=640, ge=16, description="longest side of the analysis resolution, px")


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
