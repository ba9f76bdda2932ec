"""TensorFlow.js graph models (``model.json`` + weight shards) without TensorFlow: an executor on torch, and
a one-time conversion to ONNX that ONNX Runtime then runs.

The executor reads the graph as data: its nodes (TensorFlow ops with their attributes) run one by one in
topological order, each as the torch operation it means. Activations stay in TensorFlow's NHWC layout; a
convolution views them as channels-last NCHW, which costs no copy. Weights stored as float16 (or 8/16-bit
affine quantised) are dequantised to float32 at load, as TensorFlow.js does. Only the ops the shipped models
use are implemented (``_ops``); a graph with any other op is refused at load with one error naming every op
it lacks. Parity with TensorFlow.js itself is tested against ``../shared/reference/tfjs``.

``compile_graph`` traces the executor once into an ONNX file (cached by the model's content) and serves the
model with ONNX Runtime: on 2 CPU cores that ran the three shipped models 1.4-2.1x faster than the executor,
with the same outputs (``anomalens eval perception-speed`` measures both side by side).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import ModelStoreError
from anomalens.tools.onnx_runtime import cache_name, export, session

DTYPES = {"DT_FLOAT": "float32", "DT_INT32": "int32", "DT_INT64": "int64", "DT_BOOL": "bool"}
_WEIGHT_BYTES = {"float32": 4, "int32": 4, "bool": 1, "float16": 2, "uint8": 1, "uint16": 2}


class UnsupportedGraph(ModelStoreError):
    """A graph that uses ops this runtime does not implement."""


def _torch():
    import torch

    return torch


# --- attributes -----------------------------------------------------------------------------------------


def _attr(node: dict, name: str, default: Any = None) -> Any:
    """A node attribute as a Python value (ints, floats, bools, strings, lists, dtypes)."""
    value = node.get("attr", {}).get(name)
    if value is None:
        return default
    if "list" in value:
        items = value["list"]
        if "i" in items:
            return [int(i) for i in items["i"]]
        if "s" in items:
            return [base64.b64decode(s).decode() for s in items["s"]]
        if "f" in items:
            return [float(f) for f in items["f"]]
        return []
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "type" in value:
        return DTYPES.get(value["type"], value["type"])
    return default


# --- weights --------------------------------------------------------------------------------------------


def read_weights(model: dict, folder: Path) -> dict[str, np.ndarray]:
    """Every weight of the manifest, by name, dequantised to float32 where it was stored quantised."""
    out = {}
    for group in model["weightsManifest"]:
        data = b"".join((folder / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape = [int(s) for s in spec["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quantised = spec.get("quantization")
            stored = quantised["dtype"] if quantised else spec["dtype"]
            if stored not in _WEIGHT_BYTES:
                raise ModelStoreError(f"{folder}: weight {spec['name']} is stored as {stored}, which is not supported")
            size = count * _WEIGHT_BYTES[stored]
            raw = np.frombuffer(data, dtype=stored, count=count, offset=offset)
            offset += size
            if quantised and stored != "float16":  # affine: value = stored * scale + min
                raw = raw.astype(np.float32) * quantised["scale"] + quantised["min"]
            out[spec["name"]] = raw.astype(spec["dtype"]).reshape(shape)
        if offset != len(data):
            raise ModelStoreError(f"{folder}: the weight files hold {len(data)} bytes, the manifest describes {offset}")
    return out


# --- ops ------------------------------------------------------------------------------------------------


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) for one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _pads(node: dict, x, kernel: tuple[int, int], strides: list[int], dilations: list[int]) -> list[int]:
    """``F.pad`` widths (left, right, top, bottom) of an NHWC input for the node's padding."""
    padding = _attr(node, "padding")
    if padding == "VALID":
        return [0, 0, 0, 0]
    if padding == "EXPLICIT":
        p = _attr(node, "explicit_paddings")
        return [p[4], p[5], p[2], p[3]]
    top, bottom = _same_padding(x.shape[1], kernel[0], strides[1], dilations[1])
    left, right = _same_padding(x.shape[2], kernel[1], strides[2], dilations[2])
    return [left, right, top, bottom]


def _activate(x, fused: list[str], node: dict):
    torch = _torch()
    for op in fused[1:]:  # the first is BiasAdd, applied by the convolution
        if op == "Relu":
            x = torch.relu(x)
        elif op == "Relu6":
            x = torch.clamp(x, 0.0, 6.0)
        elif op == "LeakyRelu":
            x = torch.nn.functional.leaky_relu(x, _attr(node, "leakyrelu_alpha", 0.2))
        elif op == "Sigmoid":
            x = torch.sigmoid(x)
        elif op == "Elu":
            x = torch.nn.functional.elu(x)
        else:
            raise UnsupportedGraph(f"fused activation {op} of node {node['name']} is not supported")
    return x


class _Conv:
    """Conv2D / DepthwiseConv2dNative and their fused forms, with filters converted to torch's layout once."""

    def __init__(self, depthwise: bool):
        self.depthwise = depthwise

    def __call__(self, node: dict, inputs: list, graph: TfjsGraph):
        torch = _torch()
        x, filters = inputs[0], inputs[1]
        fused = _attr(node, "fused_ops", [])
        if fused and fused[0] not in ("BiasAdd",):
            raise UnsupportedGraph(f"fused op {fused[0]} of node {node['name']} is not supported")
        weight = graph.converted(node["name"], filters, self.depthwise)
        strides, dilations = _attr(node, "strides", [1, 1, 1, 1]), _attr(node, "dilations", [1, 1, 1, 1])
        pads = _pads(node, x, tuple(filters.shape[:2]), strides, dilations)
        nchw = x.permute(0, 3, 1, 2)  # a channels-last view: no copy
        if any(pads):
            nchw = torch.nn.functional.pad(nchw, pads)
        out = torch.nn.functional.conv2d(
            nchw,
            weight,
            inputs[2] if fused else None,
            stride=(strides[1], strides[2]),
            dilation=(dilations[1], dilations[2]),
            groups=x.shape[3] if self.depthwise else 1,
        ).permute(0, 2, 3, 1)
        return _activate(out, fused, node) if fused else out


def _max_pool(node, inputs, graph):
    torch = _torch()
    x = inputs[0]
    ksize, strides = _attr(node, "ksize"), _attr(node, "strides")
    pads = _pads(node, x, (ksize[1], ksize[2]), strides, [1, 1, 1, 1])
    nchw = x.permute(0, 3, 1, 2)
    if any(pads):
        nchw = torch.nn.functional.pad(nchw, pads, value=float("-inf"))
    out = torch.nn.functional.max_pool2d(nchw, (ksize[1], ksize[2]), (strides[1], strides[2]))
    return out.permute(0, 2, 3, 1)


def _resize_bilinear(node, inputs, graph):
    """TensorFlow's bilinear resize, with its ``align_corners`` and ``half_pixel_centers`` conventions."""
    torch = _torch()
    x, size = inputs[0], [int(v) for v in inputs[1].tolist()]
    align, half = _attr(node, "align_corners", False), _attr(node, "half_pixel_centers", False)

    def axis(length_in: int, length_out: int):
        if align and length_out > 1:
            scale = (length_in - 1) / (length_out - 1)
        else:
            scale = length_in / length_out
        position = torch.arange(length_out, dtype=torch.float32)
        source = (position + 0.5) * scale - 0.5 if half else position * scale
        source = source.clamp(min=0)
        low = source.floor().long().clamp(max=length_in - 1)
        high = (low + 1).clamp(max=length_in - 1)
        return low, high, (source - low).clamp(0, 1)

    y0, y1, fy = axis(x.shape[1], size[0])
    x0, x1, fx = axis(x.shape[2], size[1])
    top = x[:, y0] * (1 - fy)[None, :, None, None] + x[:, y1] * fy[None, :, None, None]
    return top[:, :, x0] * (1 - fx)[None, None, :, None] + top[:, :, x1] * fx[None, None, :, None]


def _strided_slice(node, inputs, graph):
    x, begin, end, strides = inputs[0], inputs[1].tolist(), inputs[2].tolist(), inputs[3].tolist()
    masks = {name: _attr(node, name, 0) for name in
             ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}  # fmt: skip
    index: list = []
    for k, (b, e, s) in enumerate(zip(begin, end, strides)):
        bit = 1 << k
        if masks["ellipsis_mask"] & bit:
            index.append(Ellipsis)
        elif masks["new_axis_mask"] & bit:
            index.append(None)
        elif masks["shrink_axis_mask"] & bit:
            index.append(b)
        else:
            index.append(slice(None if masks["begin_mask"] & bit else b, None if masks["end_mask"] & bit else e, s))
    if any(isinstance(i, slice) and i.step is not None and i.step < 0 for i in index):
        raise UnsupportedGraph(f"StridedSlice {node['name']}: negative strides are not supported")
    return x[tuple(index)]


def _gather(node, inputs, graph):
    torch = _torch()
    params, indices, axis = inputs[0], inputs[1].long(), int(inputs[2])
    axis %= params.dim()
    picked = torch.index_select(params, axis, indices.reshape(-1))
    return picked.reshape(*params.shape[:axis], *indices.shape, *params.shape[axis + 1 :])


def _gather_nd(node, inputs, graph):
    params, indices = inputs[0], inputs[1].long()
    return params[tuple(indices[..., k] for k in range(indices.shape[-1]))]


def _reduce(function: str):
    def run(node, inputs, graph):
        torch = _torch()
        x, axes = inputs[0], inputs[1].reshape(-1).tolist()
        keep = _attr(node, "keep_dims", False)
        if function == "max":
            out = x
            for a in sorted((a % x.dim() for a in axes), reverse=True):
                out = out.amax(dim=a, keepdim=keep)
            return out
        return getattr(torch, function)(x, dim=[a % x.dim() for a in axes], keepdim=keep)

    return run


def _sparse_to_dense(node, inputs, graph):
    torch = _torch()
    indices, shape, values, default = inputs
    out = torch.full([int(v) for v in shape.reshape(-1).tolist()], default.item(), dtype=values.dtype)
    indices = indices.long().reshape(-1, max(out.dim(), 1)) if out.dim() > 1 else indices.long().reshape(-1)
    if out.dim() > 1:
        out[tuple(indices.T)] = values
    else:
        out[indices] = values
    return out


def _pad(node, inputs, graph):
    torch = _torch()
    x, paddings = inputs[0], inputs[1].tolist()
    value = inputs[2].item() if len(inputs) > 2 else 0.0
    widths = [w for before_after in reversed(paddings) for w in before_after]
    return torch.nn.functional.pad(x, widths, value=value)


def _select(node, inputs, graph):
    torch = _torch()
    condition, yes, no = inputs
    while condition.dim() < yes.dim():  # TF1 Select: a vector condition picks rows
        condition = condition.unsqueeze(-1)
    return torch.where(condition, yes, no)


def _topk(node, inputs, graph):
    torch = _torch()
    values, indices = torch.topk(inputs[0], int(inputs[1]), dim=-1, sorted=True)
    return values, indices.int()


def _cast(node, inputs, graph):
    torch = _torch()
    return inputs[0].to(getattr(torch, _attr(node, "DstT")))


def _floor_div(node, inputs, graph):
    torch = _torch()
    a, b = inputs
    return torch.div(a, b, rounding_mode="floor")


def _squeeze(node, inputs, graph):
    dims = _attr(node, "squeeze_dims")
    return inputs[0].squeeze(tuple(dims)) if dims else inputs[0].squeeze()


def _binary(function: Callable) -> Callable:
    return lambda node, inputs, graph: function(inputs[0], inputs[1])


def _unary(function: Callable) -> Callable:
    return lambda node, inputs, graph: function(inputs[0])


def _ops() -> dict[str, Callable]:
    torch = _torch()
    conv, depthwise = _Conv(depthwise=False), _Conv(depthwise=True)
    return {
        "Identity": _unary(lambda x: x),
        "Conv2D": conv,
        "_FusedConv2D": conv,
        "DepthwiseConv2dNative": depthwise,
        "FusedDepthwiseConv2dNative": depthwise,
        "MaxPool": _max_pool,
        "ResizeBilinear": _resize_bilinear,
        "Relu": _unary(torch.relu),
        "Relu6": _unary(lambda x: torch.clamp(x, 0.0, 6.0)),
        "Sigmoid": _unary(torch.sigmoid),
        "Exp": _unary(torch.exp),
        "Abs": _unary(torch.abs),
        "Reciprocal": _unary(torch.reciprocal),
        "LeakyRelu": lambda node, inputs, graph: torch.nn.functional.leaky_relu(inputs[0], _attr(node, "alpha", 0.2)),
        "Add": _binary(torch.add),
        "AddV2": _binary(torch.add),
        "Sub": _binary(torch.sub),
        "Mul": _binary(torch.mul),
        "RealDiv": _binary(torch.div),
        "FloorDiv": _floor_div,
        "FloorMod": _binary(torch.remainder),
        "Maximum": _binary(torch.maximum),
        "Minimum": _binary(torch.minimum),
        "SquaredDifference": _binary(lambda a, b: (a - b) ** 2),
        "Less": _binary(torch.lt),
        "Greater": _binary(torch.gt),
        "GreaterEqual": _binary(torch.ge),
        "Equal": _binary(torch.eq),
        "LogicalAnd": _binary(torch.logical_and),
        "AddN": lambda node, inputs, graph: reduce(torch.add, inputs),
        "Mean": _reduce("mean"),
        "Sum": _reduce("sum"),
        "Max": _reduce("max"),
        "ArgMax": lambda node, inputs, graph: torch.argmax(inputs[0], dim=int(inputs[1])).to(
            getattr(torch, _attr(node, "output_type", "int64"))
        ),
        "ConcatV2": lambda node, inputs, graph: torch.cat(inputs[:-1], dim=int(inputs[-1])),
        "Pack": lambda node, inputs, graph: torch.stack(inputs, dim=_attr(node, "axis", 0)),
        "Unpack": lambda node, inputs, graph: tuple(torch.unbind(inputs[0], dim=_attr(node, "axis", 0))),
        "Split": lambda node, inputs, graph: tuple(
            torch.chunk(inputs[1], _attr(node, "num_split"), dim=int(inputs[0]))
        ),
        "SplitV": lambda node, inputs, graph: tuple(
            torch.split(inputs[0], [int(s) for s in inputs[1].tolist()], dim=int(inputs[2]))
        ),
        "Reshape": lambda node, inputs, graph: inputs[0].reshape([int(s) for s in inputs[1].reshape(-1).tolist()]),
        "Transpose": lambda node, inputs, graph: inputs[0].permute([int(p) for p in inputs[1].tolist()]),
        "ExpandDims": lambda node, inputs, graph: inputs[0].unsqueeze(int(inputs[1])),
        "Squeeze": _squeeze,
        "Shape": lambda node, inputs, graph: torch.tensor(list(inputs[0].shape), dtype=torch.int32),
        "Size": lambda node, inputs, graph: torch.tensor(inputs[0].numel(), dtype=torch.int32),
        "Range": lambda node, inputs, graph: torch.arange(
            inputs[0].item(), inputs[1].item(), inputs[2].item(), dtype=inputs[0].dtype
        ),
        "Fill": lambda node, inputs, graph: torch.full([int(s) for s in inputs[0].tolist()], inputs[1].item(),
                                                       dtype=inputs[1].dtype),  # fmt: skip
        "Tile": lambda node, inputs, graph: inputs[0].repeat([int(m) for m in inputs[1].tolist()]),
        "Cast": _cast,
        "Select": _select,
        "TopKV2": _topk,
        "GatherV2": _gather,
        "GatherNd": _gather_nd,
        "StridedSlice": _strided_slice,
        "SparseToDense": _sparse_to_dense,
        "Pad": _pad,
        "PadV2": _pad,
    }


class TfjsGraph:
    """A loaded graph model: ``run({input: array}) -> {output: array}`` (numpy in, numpy out)."""

    def __init__(self, model: dict, weights: dict[str, np.ndarray], source: str):
        self.source = source
        self.nodes = {node["name"]: node for node in model["modelTopology"]["node"]}
        self._ops = _ops()
        unsupported = sorted({n["op"] for n in self.nodes.values()} - set(self._ops) - {"Const", "Placeholder"})
        if unsupported:
            raise UnsupportedGraph(
                f"{source}: the graph uses ops anomalens' TFJS runtime does not implement: {', '.join(unsupported)}"
            )
        torch = _torch()
        self._constants = {}
        for name, node in self.nodes.items():
            if node["op"] == "Const":
                if name not in weights:
                    raise ModelStoreError(f"{source}: constant {name} has no weights")
                # The node's own shape wins: the manifest stores scalars as shape [1].
                declared = node.get("attr", {}).get("value", {}).get("tensor", {}).get("tensorShape")
                value = weights[name]
                if declared is not None:
                    value = value.reshape([int(d.get("size", 0)) for d in declared.get("dim", [])])
                self._constants[name] = torch.from_numpy(np.array(value, order="C"))  # ascontiguousarray makes 0-d 1-d
        self._filters: dict[str, Any] = {}
        self.inputs = [name for name, node in self.nodes.items() if node["op"] == "Placeholder"]

    @classmethod
    def load(cls, model_json: str | Path) -> TfjsGraph:
        path = Path(model_json)
        try:
            model = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelStoreError(f"{path}: not a readable TFJS graph model ({error})") from None
        if model.get("format") != "graph-model":
            raise ModelStoreError(f"{path}: a TFJS {model.get('format')!r} model, not a graph model")
        return cls(model, read_weights(model, path.parent), str(path))

    def converted(self, name: str, filters, depthwise: bool):
        """A TF filter (kh, kw, in, out|multiplier) in torch's (out, in/groups, kh, kw) layout, converted once."""
        if name not in self._filters:
            if depthwise:
                kh, kw, channels, multiplier = filters.shape
                weight = filters.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
            else:
                weight = filters.permute(3, 2, 0, 1)
            self._filters[name] = weight.contiguous()
        return self._filters[name]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Compute ``outputs`` (node names, ``name:k`` for a node's k-th output) from ``feeds`` (input -> array)."""
        torch = _torch()
        values: dict[str, Any] = dict(self._constants)
        for name, array in feeds.items():
            if name not in self.inputs:
                raise ValueError(f"{self.source}: no input {name!r} (inputs: {', '.join(self.inputs)})")
            values[name] = torch.from_numpy(np.ascontiguousarray(array))
        with torch.inference_mode():
            results = {out: self._value(out, values) for out in outputs}
        return {name: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for name, v in results.items()}

    def _value(self, reference: str, values: dict[str, Any]):
        """The tensor ``reference`` (``node`` or ``node:k``) names, computing what it needs (iteratively: graphs
        are deeper than Python's recursion allows)."""
        base, _, k = reference.partition(":")
        stack = [base]
        while stack:
            name = stack[-1]
            if name in values:
                stack.pop()
                continue
            node = self.nodes.get(name)
            if node is None:
                raise ValueError(f"{self.source}: no node {name!r}")
            if node["op"] == "Placeholder":
                raise ValueError(f"{self.source}: input {name!r} was not fed")
            needed = [i.partition(":")[0] for i in node.get("input", []) if not i.startswith("^")]
            missing = [n for n in needed if n not in values]
            if missing:
                stack.extend(missing)
                continue
            inputs = [self._output(i, values) for i in node.get("input", []) if not i.startswith("^")]
            values[name] = self._ops[node["op"]](node, inputs, self)
            stack.pop()
        return self._output(reference, values)

    @staticmethod
    def _output(reference: str, values: dict[str, Any]):
        name, _, k = reference.partition(":")
        value = values[name]
        return value[int(k or 0)] if isinstance(value, tuple) else value


class OnnxGraph:
    """A graph converted once to ONNX, run by ONNX Runtime: ``run(feeds, outputs)`` as ``TfjsGraph``'s, for the
    outputs it was converted with."""

    def __init__(self, session, outputs: Sequence[str], source: str):
        self.session, self.outputs, self.source = session, list(outputs), source

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [o for o in outputs if o not in self.outputs]
        if missing:
            raise ValueError(f"{self.source}: converted without the outputs {', '.join(missing)}")
        ((name, array),) = feeds.items()
        values = self.session.run(self.outputs, {"input": np.ascontiguousarray(array)})
        return {o: v for o, v in zip(self.outputs, values) if o in outputs}


def compile_graph(
    model_json: str | Path, feed: dict[str, np.ndarray], outputs: Sequence[str], cache: Path
) -> OnnxGraph:
    """``model_json`` served by ONNX Runtime, converted at the first call (traced from the executor with ``feed``,
    one input of the shape it will always get; checked against the executor on that input) and kept in
    ``cache`` under a name derived from the model's files, so a changed model is converted again."""
    path = Path(model_json)
    files = [path.read_bytes(), *(shard.read_bytes() for shard in sorted(path.parent.glob(f"{path.stem}*.bin")))]
    converted = cache / cache_name(path.stem, *files, list(outputs), {k: v.shape for k, v in feed.items()})
    if not converted.is_file():
        graph = TfjsGraph.load(path)
        if len(graph.inputs) != 1:
            raise ModelStoreError(f"{graph.source}: {len(graph.inputs)} inputs; conversion handles graphs of one input")
        ((_, array),) = feed.items()
        export(_traced(graph, outputs), array, outputs, converted, source=graph.source)
    return OnnxGraph(session(converted), outputs, str(path))


def _traced(graph: TfjsGraph, outputs: Sequence[str]):
    """The executor as a torch module of one input, for tracing."""
    name = graph.inputs[0]

    class Traced(_torch().nn.Module):
        def forward(self, x):
            values = dict(graph._constants) | {name: x}
            return tuple(graph._value(output, values) for output in outputs)

    return Traced()
