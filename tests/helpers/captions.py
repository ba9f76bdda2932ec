"""Caption rules and a sentence embedder for tests of caption reasoning."""

import re
import zlib

import numpy as np

RULES = """\
**Anomaly Human Activities:**
1. Running or jumping
2. Riding a bicycle or scooter, skateboarding

**Anomaly Non-Human Objects:**
1. Ground transportations such as vehicles, vans.

**Rules for Normal Human Activities:**
1. Walking alone or with another person
2. Standing near a bench

**Rules for Normal Non-Human Objects:**
1. Trees along the path
"""


class BagOfWords:
    """A deterministic sentence embedder for testing the cascade's logic: hashed word counts, unit rows."""

    name = "bag-of-words"

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        rows = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                rows[i, zlib.crc32(word.encode()) % 256] += 1
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)
