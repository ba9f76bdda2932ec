"""The LLM's part in caption reasoning: it settles the phrases the embedding stage leaned on, by choosing which
of the nearest rules (anomaly and normal ones, shuffled) a phrase fits best. Small models match far better
than they judge "anomalous or not" outright. The flow around it is ``pipelines.captions``.
"""

from __future__ import annotations

import random
import zlib
from typing import Literal

from pydantic import create_model

from anomalens.agents.llm import LLM, Message, ask_structured
from anomalens.errors import LLMError
from anomalens.progress import track
from anomalens.prompts import load as load_prompts
from anomalens.tools.caption_scoring import CaptionScorer, PhraseMatch

LLM_ATTEMPTS = 2
CHOICES_PER_KIND = 3  # the LLM chooses among the 3 nearest anomaly rules and the 3 nearest normal rules
LETTERS = "ABCDEFGHIJ"


def judge_phrases(
    scorer: CaptionScorer, llm: LLM, candidates: list[PhraseMatch], progress: bool = True
) -> tuple[list[PhraseMatch], int]:
    """The LLM's verdicts on ``candidates`` and the number of chat calls they took.

    For each phrase the LLM picks, among the nearest anomaly and normal rules in a shuffled order, the one
    the phrase fits best; picking an anomaly rule makes the phrase anomalous under that rule."""
    text = load_prompts("captions")
    system = Message(role="system", content=text["system"])
    judge = f"{llm.backend}:{llm.model}"
    out, calls = [], 0
    for match in track(candidates, "LLM settling phrases", total=len(candidates), enabled=progress):
        options = scorer.nearest_rules(match.phrase, CHOICES_PER_KIND)
        # A fixed shuffle per phrase: where a rule is listed must not say which kind it is.
        random.Random(zlib.crc32(match.phrase.encode())).shuffle(options)
        letters = LETTERS[: len(options)]
        question = text["choices"].format(
            phrase=match.phrase,
            options="\n".join(f"{letter}) {rule.sentence}" for letter, rule in zip(letters, options)),
        )
        choice_model = create_model("RuleChoice", choice=(Literal[tuple(letters)], ...))
        try:
            answer = ask_structured(
                llm,
                [system, Message(role="user", content=question)],
                choice_model,
                attempts=LLM_ATTEMPTS,
                max_tokens=16,
            )
        except LLMError:
            calls += LLM_ATTEMPTS
            continue  # no valid choice: the phrase keeps its embedding score
        calls += answer.attempts
        chosen = options[letters.index(answer.value.choice)]
        out.append(match.decided(chosen.id if chosen.kind == "anomaly" else None, judge))
    return out, calls
