"""Sentence embeddings with a BERT-style encoder through transformers (all-MiniLM-L6-v2 by default).

Mean pooling over tokens and L2 normalisation, as sentence-transformers does for MiniLM, so a dot product of
two embeddings is their cosine similarity. torch and transformers load when an embedder is first built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomalens.errors import AnomalensError
from anomalens.progress import track

MAX_TOKENS = 128  # captions' phrases are short; longer text is truncated
BATCH = 64


class SentenceEmbedder:
    """``embed(texts) -> (N, D) float32``, unit rows."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def load(cls, model: str | Path, *, root: Path | None = None) -> SentenceEmbedder:
        """A store name (``Settings.embedder``), a local folder, or a Hugging Face id in a warm cache (offline)."""
        from anomalens.modelstore import resolve

        path = resolve(model, root=root)
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise AnomalensError('sentence embeddings need transformers: pip install "anomalens[hf]"') from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        except (OSError, ValueError) as error:  # a folder without the files: OSError or ValueError by version
            raise AnomalensError(f"{model}: cannot load a sentence encoder from {path} ({error})") from None
        return cls(encoder, tokenizer, str(model))

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
        rows = np.zeros((len(texts), self.dimension), dtype=np.float32)
        starts = range(0, len(texts), BATCH)
        for start in track(starts, f"embedding {len(texts)} texts", total=len(starts), enabled=progress):
            batch = order[start : start + BATCH]
            encoded = self.tokenizer(
                [texts[i] for i in batch], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows[batch] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
        return rows
