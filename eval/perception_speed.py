"""How fast the pretrained perception runs here, measured side by side in one run on real frames (UCSD Ped2):

- each TFJS graph (CenterNet 512 px, NanoDet 416 px, MoveNet 256 px) on the torch executor and on its ONNX
  conversion under ONNX Runtime (the choice the backends make rests on this ratio);
- CenterNet's network (its graph up to its output heads) on a batch of 4 frames against one frame at a time;
- each backend end to end (letterbox, network, decoding, NMS), per frame; each embedder per crop, alone and in
  a batch of 16, at its own 224 px and at the 128 px objects are embedded at, and its torch network against its
  ONNX conversion on the same batch;
- beside TensorFlow.js's pure-JS CPU backend, which took 20-30 s a frame for these models when
  ``../shared/reference/tfjs`` was made: a sanity ratio from another machine and runtime, not a benchmark of it.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from anomalens import modelstore, registry
from anomalens.errors import AnomalensError
from anomalens.progress import track
from anomalens.tools.objects import CROP_SIDE
from anomalens.tools.vision import letterbox
from anomalens.video import natural_key

TFJS_PURE_JS_SECONDS = 25.0  # the middle of the 20-30 s a frame the reference outputs' README reports
BATCH = 4
GRAPHS = {  # backend -> the graph's file stem, the executor's input, the outputs the backend reads
    "detector:centernet": ("centernet", "tower_0/images", ["tower_0/detections"]),
    "detector:nanodet": ("nanodet", "input_1", [f"Identity{'' if k == 0 else f'_{k}'}" for k in range(6)]),
    "pose:movenet": ("movenet-multipose", "input", ["Identity"]),
}


def _frames(data: Path, count: int) -> list[np.ndarray]:
    folder = data / "ucsd_ped2" / "test" / "01"
    paths = sorted(folder.glob("*.jpg"), key=natural_key)[:count]
    if len(paths) < count:
        raise AnomalensError(f"{folder}: needs {count} frames of UCSD Ped2 test video 01 (see ../shared/data)")
    return [cv2.imread(str(p)) for p in paths]


def _load(name: str):
    backend = registry.get(name)
    if backend.missing():
        raise AnomalensError(f"{name} needs {', '.join(backend.missing())}: pip install 'anomalens[{backend.extra}]'")
    return registry.load(name).load(modelstore.resolve(backend.store))


def _ms(run, items: int, repeats: int = 1) -> float:
    """Milliseconds per item of ``run()``, which handles ``items`` items, averaged over ``repeats`` calls."""
    run()  # the first call converts filters and warms the allocator: not counted
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return 1000 * (time.perf_counter() - started) / repeats / items


def _feed(name: str, backend, image: np.ndarray) -> np.ndarray:
    """The network input a backend makes of a frame (what its graph is timed on)."""
    canvas, _ = letterbox(image, backend.side)
    if name == "detector:nanodet":
        return ((canvas.astype(np.float32) - backend.mean) / backend.std).transpose(2, 0, 1)[None].copy()
    rgb = canvas[None, :, :, ::-1]
    return rgb.astype(np.int32 if name == "pose:movenet" else np.float32)


def _torch_run(network, batch: np.ndarray) -> None:
    import torch

    with torch.inference_mode():
        network(torch.from_numpy(batch))


def run_speed(data: str | Path, frames: int = 8, progress: bool = True) -> dict:
    """Milliseconds per frame (and per crop) of every pretrained perception backend and both graph runtimes."""
    from anomalens.tools.tfjs import TfjsGraph

    images = _frames(Path(data), frames)
    rows: dict[str, dict] = {}
    timed = track(GRAPHS.items(), "timing the graph models", total=len(GRAPHS), enabled=progress)
    for name, (stem, executor_input, outputs) in timed:
        backend = _load(name)
        executor = TfjsGraph.load(modelstore.resolve(registry.get(name).store) / f"{stem}.json")
        feeds = [_feed(name, backend, image) for image in images]
        run_frame = backend.detect if name.startswith("detector") else backend.estimate
        row = {
            "input": f"{backend.side} px",
            "executor_ms_per_frame": _ms(lambda: [executor.run({executor_input: f}, outputs) for f in feeds], frames),
            "onnx_ms_per_frame": _ms(lambda: [backend.graph.run({"input": f}, outputs) for f in feeds], frames),
            "backend_ms_per_frame": _ms(lambda: [run_frame(image) for image in images], frames),
        }
        row["onnx_speedup"] = row["executor_ms_per_frame"] / row["onnx_ms_per_frame"]
        row["faster_than_tfjs_pure_js"] = TFJS_PURE_JS_SECONDS * 1000 / row["backend_ms_per_frame"]
        if name == "detector:centernet":  # its heads take any batch; its decoding (and the other graphs') one frame
            heads = ["tower_0/keypoints", "tower_0/wh"]
            batches = [np.concatenate(feeds[k : k + BATCH]) for k in range(0, frames, BATCH)]
            row["network_ms_per_frame_one_at_a_time"] = _ms(
                lambda: [executor.run({executor_input: f}, heads) for f in feeds], frames
            )
            row["network_ms_per_frame_batch_of_4"] = _ms(
                lambda: [executor.run({executor_input: b}, heads) for b in batches], frames
            )
        rows[name] = row
    crops = np.array([[100.0, 80.0, 130.0, 150.0]] * 16)  # person-sized boxes in Ped2's 360x240 frames
    for name in ("embedder:efficientnet-lite0", "embedder:mobilenetv2"):
        embedder = _load(name)
        network = type(embedder)._network(Path(embedder.weights))
        row = {}
        for side in (embedder.side, CROP_SIDE):
            batch = np.random.default_rng(0).normal(size=(16, 3, side, side)).astype(np.float32)
            row[f"{side}px"] = {
                "ms_per_crop_alone": _ms(lambda e=embedder: e.embed(images[0], crops[:1], side=side), 1, repeats=8),
                "ms_per_crop_in_16": _ms(lambda e=embedder: e.embed(images[0], crops, side=side), 16, repeats=2),
                "torch_network_ms_per_crop_in_16": _ms(lambda: _torch_run(network, batch), 16, repeats=2),
                "onnx_network_ms_per_crop_in_16": _ms(
                    lambda e=embedder: e.runtime.run(["features"], {"input": batch}), 16, repeats=2
                ),
            }
            row[f"{side}px"]["onnx_speedup"] = (
                row[f"{side}px"]["torch_network_ms_per_crop_in_16"] / row[f"{side}px"]["onnx_network_ms_per_crop_in_16"]
            )
        rows[name] = row
    return {"frames": frames, "tfjs_pure_js_s_per_frame": TFJS_PURE_JS_SECONDS, "backends": rows}
