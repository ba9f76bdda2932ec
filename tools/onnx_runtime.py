"""Torch networks converted once to ONNX and served by ONNX Runtime.

On 2 CPU cores ONNX Runtime ran every pretrained network here 1.4-4.7x faster than torch with the same outputs
(depthwise convolutions, which MobileNets and EfficientNets are made of, gain most); ``anomalens eval
perception-speed`` measures both side by side. A conversion is traced, checked against the torch network on
the example input, and only then moved into the cache, so a half-written or wrong file is never served.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalens.errors import ModelStoreError


def cache_name(stem: str, *parts: object) -> str:
    """A file name for a conversion that changes whenever any of ``parts`` (file contents, shapes) does."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
    return f"{stem}-{digest.hexdigest()[:16]}.onnx"


def export(
    module,
    example: np.ndarray,
    outputs: Sequence[str],
    target: Path,
    *,
    dynamic: dict[int, str] | None = None,
    source: str = "",
    tolerance: float = 1e-3,
) -> None:
    """Trace ``module`` (one input, named ``input``) into ONNX at ``target``; ``dynamic`` names the input axes that
    may vary (e.g. ``{0: "batch"}``). Refused, naming ``source``, when ONNX Runtime's outputs on ``example``
    differ from the module's."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        onnx_path = Path(scratch) / target.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer notes every shape it fixes
            torch.onnx.export(module, (torch.from_numpy(example),), str(onnx_path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=list(outputs),
                              dynamic_axes={"input": dynamic} if dynamic else None)  # fmt: skip
            expected = module(torch.from_numpy(example))
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        converted = session(onnx_path).run(list(outputs), {"input": example})
        for output, value, reference in zip(outputs, converted, expected):
            reference = reference.numpy()
            if value.shape != reference.shape or not np.allclose(value, reference, atol=tolerance, rtol=tolerance):
                raise ModelStoreError(f"{source or target}: the ONNX conversion of {output} differs from the network's")
        onnx_path.replace(target)


def session(path: Path):
    """An ONNX Runtime session on the CPU for ``path``, quiet about its graph optimisations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # no warnings about constant folding on stderr
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
