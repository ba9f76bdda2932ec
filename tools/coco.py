"""The COCO vocabulary of the pretrained detectors (``coco.yaml``): the 80 class names in output order, and which
class a word of a prompt or a claim names."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import yaml


@cache
def coco() -> tuple[list[str], dict[str, str]]:
    """The 80 class names in output order, and every word that names one (class names included) -> the class."""
    text = resources.files("anomalens.tools").joinpath("coco.yaml").read_text(encoding="utf-8")
    names, words = [], {}
    for entry in yaml.safe_load(text)["classes"]:
        ((name, aliases),) = entry.items()
        names.append(name)
        for word in [name, *aliases]:
            words[_fold(word)] = name
    return names, words


def _fold(text: str) -> str:
    """Lower case, articles dropped, each word's plural folded: "Two Bikes" -> "two bike"."""
    words = [w for w in re.findall(r"[a-z]+", text.lower()) if w not in ("a", "an", "the", "some")]
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def coco_class(term: str) -> str | None:
    """The COCO class a term names ("a bike" -> "bicycle", "people" -> "person"), or None."""
    words = coco()[1]
    folded = _fold(term)
    if folded in words:
        return words[folded]
    # "a red car": the longest run of words that names a class
    tokens = folded.split()
    for length in range(len(tokens), 0, -1):
        for start in range(len(tokens) - length + 1):
            if (found := words.get(" ".join(tokens[start : start + length]))) is not None:
                return found
    return None


CLOSEST = 0.5  # MiniLM cosine to a class name that names it: "vehicle" 0.87 car, "a van" 0.53 car, "scooter" 0.58
# motorcycle, while "cart" (0.46 bottle), "stroller" (0.48) and "the weather" (0.44) name nothing


class ClassNamer:
    """Free text -> the COCO class it names: ``coco.yaml``'s words first, else the class whose name a sentence
    encoder (``tools.embeddings.SentenceEmbedder``) puts nearest, when at least ``CLOSEST`` similar; or None."""

    def __init__(self, encoder):
        self.encoder = encoder
        self._names = None  # the class names' embeddings, made at the first word the vocabulary lacks

    def __call__(self, text: str) -> str | None:
        if (found := coco_class(text)) is not None:
            return found
        names = coco()[0]
        if self._names is None:
            self._names = self.encoder.embed(names)
        similarity = self._names @ self.encoder.embed([text])[0]
        best = int(similarity.argmax())
        return names[best] if similarity[best] >= CLOSEST else None
