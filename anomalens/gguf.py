"""Read a GGUF file's header (metadata key/values) without loading tensors or importing any ML library.

Used by the model store to check that an assembled file really is the model its catalogue entry names
(architecture, parameter label, quantisation, licence) before anything executes it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from anomalens.errors import ModelStoreError

MAGIC = b"GGUF"
# GGUF value type codes -> struct format of a scalar (8 = string, 9 = array are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Large arrays (the tokenizer's vocabulary) are summarised by their length, not read into memory.
MAX_ARRAY_ITEMS = 64

# general.file_type codes (llama.cpp's llama_ftype) for the quantisations we meet.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


def _read(stream: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = stream.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack("<" + fmt, data)[0]


def _string(stream: BinaryIO) -> str:
    length = _read(stream, "Q")
    return stream.read(length).decode("utf-8", errors="replace")


def _value(stream: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(stream)
    if kind == _ARRAY:
        item_kind, count = _read(stream, "I"), _read(stream, "Q")
        items = [_value(stream, item_kind) for _ in range(min(count, MAX_ARRAY_ITEMS))]
        if count > MAX_ARRAY_ITEMS:
            if item_kind == _STRING:
                for _ in range(count - MAX_ARRAY_ITEMS):
                    stream.seek(_read(stream, "Q"), 1)
            elif item_kind in _SCALARS:
                stream.seek(struct.calcsize("<" + _SCALARS[item_kind]) * (count - MAX_ARRAY_ITEMS), 1)
            else:
                raise ValueError(f"nested array of type {item_kind}")
            return {"array_length": count}
        return items
    if kind in _SCALARS:
        return _read(stream, _SCALARS[kind])
    raise ValueError(f"unknown value type {kind}")


def read_header(path: str | Path) -> dict[str, Any]:
    """Metadata of a GGUF file: ``{"gguf.version": int, "gguf.tensors": int, key: value, ...}``."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            if stream.read(4) != MAGIC:
                raise ModelStoreError(f"{path}: not a GGUF file (bad magic)")
            header: dict[str, Any] = {"gguf.version": _read(stream, "I")}
            header["gguf.tensors"] = _read(stream, "Q")
            for _ in range(_read(stream, "Q")):
                key = _string(stream)
                header[key] = _value(stream, _read(stream, "I"))
    except FileNotFoundError:
        raise ModelStoreError(f"{path}: file not found") from None
    except (EOFError, ValueError, struct.error) as error:
        raise ModelStoreError(f"{path}: truncated or corrupt GGUF header ({error or 'ends early'})") from None
    return header


def describe(header: dict[str, Any]) -> dict[str, str]:
    """The few header facts a person checks: architecture, name, size label, quantisation, licence."""
    file_type = header.get("general.file_type")
    return {
        "architecture": str(header.get("general.architecture", "?")),
        "name": str(header.get("general.name", "?")),
        "size_label": str(header.get("general.size_label", "?")),
        "quantization": FILE_TYPES.get(file_type, str(file_type)) if file_type is not None else "?",
        "license": str(header.get("general.license", "?")),
        "context_length": str(header.get(f"{header.get('general.architecture')}.context_length", "?")),
    }
