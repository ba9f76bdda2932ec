"""Caption-reasoning benchmark on per-frame captions with frame labels (AnomalyRuler's CogVLM captions).

A dataset folder holds ``captions/<video>.txt`` (line k = frame k), ``labels/<video>.csv`` (``frame,label``,
1 = anomalous) and ``published_rules.txt`` (the rules, parsed by ``anomalens.rules.captions``). Labels are
read only to score. The settings (``NOVELTY_WEIGHT``, ``SMOOTHING_WIDTH``) were chosen on ShanghaiTech and
are applied unchanged to every dataset; the JSON records them.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from anomalens.agents.llm import LLM
from anomalens.errors import AnomalensError
from anomalens.eval.metrics import average_precision, best_f1, macro_auc, roc_auc
from anomalens.events import smooth
from anomalens.pipelines.captions import (
    DEFAULT_LLM_FRACTION,
    SMOOTHING_WIDTH,
    caption_rulebook,
    reason_over_captions,
    sentence_embedder,
)
from anomalens.tools.caption_scoring import NOVELTY_WEIGHT, CaptionScorer
from anomalens.tools.captions import ReplayedCaptions
from anomalens.tools.embeddings import SentenceEmbedder
from anomalens.video import natural_key

RULES_FILE = "published_rules.txt"


def read_labels(path: Path) -> np.ndarray:
    """``frame,label`` rows (a header first) -> 0/1 per frame; errors name the file and line."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise AnomalensError(f"{path}: label file not found") from None
    labels = []
    for number, row in enumerate(rows[1:], 2):
        try:
            frame, label = int(row[0]), int(row[1])
        except (IndexError, ValueError):
            raise AnomalensError(f"{path}:{number}: expected 'frame,label' with integers, got {row}") from None
        if frame != len(labels) or label not in (0, 1):
            raise AnomalensError(f"{path}:{number}: expected frame {len(labels)} with label 0 or 1, got {row}")
        labels.append(label)
    return np.array(labels, dtype=np.int8)


def load_caption_dataset(folder: str | Path) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Captions and labels per video, in natural order; every caption file needs a label file of its length."""
    folder = Path(folder)
    files = sorted((folder / "captions").glob("*.txt"), key=natural_key)
    if not files:
        raise AnomalensError(f"{folder}: no captions/*.txt (expected the layout of ../shared/data/vlm_captions/NAME)")
    captions, labels = {}, {}
    for path in files:
        replay = ReplayedCaptions.load(path)
        captions[path.stem] = [replay.captions[k] for k in range(len(replay))]
        labels[path.stem] = read_labels(folder / "labels" / f"{path.stem}.csv")
        if len(labels[path.stem]) != len(captions[path.stem]):
            raise AnomalensError(
                f"{path}: {len(captions[path.stem])} captions but {len(labels[path.stem])} labels in "
                f"labels/{path.stem}.csv"
            )
    return captions, labels


def run_captions(
    data: str | Path,
    dataset: str,
    llm: LLM | None = None,
    *,
    embedder: SentenceEmbedder | None = None,
    llm_fraction: float = DEFAULT_LLM_FRACTION,
    progress: bool = True,
) -> dict:
    """Score every frame of one dataset with its published rules and measure the scores against its labels
    (``embedder``: the settings' sentence embedder unless given)."""
    started = time.perf_counter()
    data = Path(data)
    captions, labels = load_caption_dataset(data)
    scorer = CaptionScorer(caption_rulebook(data / RULES_FILE), embedder or sentence_embedder())
    result = reason_over_captions(captions, scorer, llm, llm_fraction=llm_fraction, progress=progress)
    truth = np.concatenate([labels[v] for v in captions])

    def micro(per_video) -> float:
        return roc_auc(truth, np.concatenate([per_video(v) for v in captions]))

    scores = np.concatenate([result.videos[v].scores for v in captions])
    f1, f1_threshold = best_f1(truth, scores)
    macro, per_video = macro_auc({v: (labels[v], result.videos[v].scores) for v in captions})
    return {
        "dataset": dataset,
        "frame_auc": roc_auc(truth, scores),
        "frame_aupr": average_precision(truth, scores),
        "frame_f1": f1,
        "f1_threshold": f1_threshold,
        "frame_auc_macro": macro,
        "frame_auc_embedding_only": micro(lambda v: result.videos[v].embedding_only),
        "frame_auc_rules_only": micro(lambda v: smooth(result.videos[v].cues.rule, SMOOTHING_WIDTH)),
        "frame_auc_novelty_only": micro(lambda v: smooth(result.videos[v].cues.novelty, SMOOTHING_WIDTH)),
        "frames": result.frames,
        "anomalous_frames": int(truth.sum()),
        "videos": len(captions),
        "phrases": result.phrases,
        "llm": result.llm,
        "llm_calls": result.llm_calls,
        "llm_call_fraction": result.llm_calls / result.frames,
        "embedder": scorer.embedder.name,
        "set_aside": [vars(a) for a in scorer.set_aside],
        "settings": {
            "novelty_weight": NOVELTY_WEIGHT,
            "smoothing_width": SMOOTHING_WIDTH,
            "llm_fraction": llm_fraction,
        },
        "seconds": time.perf_counter() - started,
        "per_video_auc": per_video,
        "decided": result.decisions(),
    }
