"""Measure LLMs on the fixed anomaly-reasoning prompt set (``llm_prompts.yaml``): accuracy, structured-output
validity (first try, and after repair/retry), tool-call accuracy, time to first token and tokens/s."""

from __future__ import annotations

import statistics
import time
from importlib import resources
from typing import Literal, Optional

import yaml
from pydantic import BaseModel

from anomalens.agents.llm import LLM, Message, ToolSpec, ask_structured
from anomalens.errors import LLMError
from anomalens.progress import track
from anomalens.prompts import load as load_prompts


# What the model must answer for each reasoning case. No docstring: it would go into the JSON schema the
# model sees. The reason comes first so that a model decoding left to right reasons before it decides.
class Judgement(BaseModel):
    reason: str
    anomalous: bool
    rule: Optional[Literal["R1", "R2", "R3", "R4", "R5", "R6", "R7"]]


def prompt_set() -> dict:
    return yaml.safe_load(resources.files("anomalens.eval").joinpath("llm_prompts.yaml").read_text(encoding="utf-8"))


def case_messages(case: dict) -> list[Message]:
    text = load_prompts("judge")
    return [
        Message(role="system", content=text["system"]),
        Message(
            role="user", content=text["case"].format(rules="\n".join(case["rules"]), observation=case["observation"])
        ),
    ]


def bench(llm: LLM, *, progress: bool = True, max_tokens: int = 160) -> dict:
    """Run every case on ``llm``; return the summary and per-case rows."""
    cases = prompt_set()
    rows = []
    for case in track(cases["cases"], f"{llm.model}: reasoning", total=len(cases["cases"]), enabled=progress):
        started = time.perf_counter()
        try:
            answer = ask_structured(llm, case_messages(case), Judgement, max_tokens=max_tokens)
            judgement, attempts, results = answer.value, answer.attempts, answer.results
        except LLMError:
            judgement, attempts, results = None, None, []
        correct = (
            judgement is not None
            and judgement.anomalous == case["anomalous"]
            and (judgement.rule == case["rule"] or not case["anomalous"])
        )
        rows.append(
            {
                "id": case["id"],
                "valid_first_try": attempts == 1,
                "valid": judgement is not None,
                "correct": correct,
                "answer": judgement.model_dump() if judgement else None,
                "seconds": time.perf_counter() - started,
                **_speed(results),
            }
        )
    tools = [ToolSpec(**t) for t in cases["tools"]]
    tool_rows = []
    for case in track(
        cases["tool_cases"], f"{llm.model}: tool calls", total=len(cases["tool_cases"]), enabled=progress
    ):
        result = llm.chat([Message(role="user", content=case["request"])], tools=tools, max_tokens=max_tokens)
        call = result.tool_calls[0] if result.tool_calls else None
        expected = case["arguments"]
        correct = (
            call is not None
            and call.name == case["tool"]
            and all(call.arguments.get(k) == v for k, v in expected.items())
        )
        tool_rows.append({"id": case["id"], "correct": correct, "call": call.model_dump() if call else result.text})
    n = len(rows)
    ttft = [r["first_token_seconds"] for r in rows if r["first_token_seconds"] is not None]
    rates = [r["tokens_per_second"] for r in rows if r["tokens_per_second"] is not None]
    return {
        "backend": llm.backend,
        "model": llm.model,
        "cases": n,
        "accuracy": sum(r["correct"] for r in rows) / n,
        "valid_first_try": sum(r["valid_first_try"] for r in rows) / n,
        "valid_after_retry": sum(r["valid"] for r in rows) / n,
        "tool_call_accuracy": sum(r["correct"] for r in tool_rows) / len(tool_rows),
        "median_first_token_s": statistics.median(ttft) if ttft else None,
        "median_tokens_per_s": statistics.median(rates) if rates else None,
        "median_case_s": statistics.median(r["seconds"] for r in rows),
        "rows": rows,
        "tool_rows": tool_rows,
    }


def _speed(results) -> dict:
    """Speed of the first attempt (retries repeat a longer prompt and would blur the numbers)."""
    if not results:
        return {"first_token_seconds": None, "tokens_per_second": None}
    first = results[0]
    return {"first_token_seconds": first.first_token_seconds, "tokens_per_second": first.tokens_per_second}
