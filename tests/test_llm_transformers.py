"""The transformers backend: a tiny random chat model built from a config (real tokenizer, chat template and
generate path, no download), and a real GGUF file dequantised by transformers."""

from __future__ import annotations

import numpy as np
import pytest

from anomalens.agents.llm import Message, ToolSpec, open_llm
from anomalens.errors import LLMError
from anomalens.tools import tiny

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    return tiny.llm_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_tiny_model_generates_with_counts_and_latency(tiny_chat_model):
    llm = open_llm("transformers", str(tiny_chat_model))
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="a person walks")]
    result = llm.chat(messages, max_tokens=8)
    expected_prompt = llm._tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert result.prompt_tokens == len(expected_prompt)
    assert 1 <= result.completion_tokens <= 8
    assert 0 < result.first_token_seconds < result.seconds
    assert llm.chat(messages, max_tokens=8).text == result.text  # greedy decoding is deterministic


def test_tools_are_described_in_the_prompt_for_in_process_models(tiny_chat_model):
    llm = open_llm("transformers", str(tiny_chat_model))
    tool = ToolSpec(
        name="measure_speed",
        description="Speed of a track.",
        parameters={"type": "object", "properties": {"track": {"type": "integer"}}},
    )
    question = [Message(role="user", content="how fast?")]
    bare, with_tools = llm.chat(question, max_tokens=2), llm.chat(question, tools=[tool], max_tokens=2)
    assert with_tools.prompt_tokens > bare.prompt_tokens + 20


def test_clear_errors_for_what_cannot_work(tiny_chat_model, tmp_path):
    llm = open_llm("transformers", str(tiny_chat_model))
    with pytest.raises(LLMError, match="text-only model"):
        llm.chat([Message(role="user", content="look", images=[np.zeros((8, 8, 3), np.uint8)])])
    with pytest.raises(LLMError, match="4-bit loading \\(bitsandbytes\\) needs a CUDA GPU"):
        open_llm("transformers", str(tiny_chat_model), quantization=4)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LLMError, match="transformers could not load this model"):
        open_llm("transformers", str(tmp_path))
    with pytest.raises(LLMError, match="not in the Hugging Face cache; nothing is downloaded"):
        open_llm("transformers", "nobody/no-such-model")


@pytest.mark.slow
def test_real_gguf_through_transformers_agrees_with_llama_cpp(smollm2):
    """SmolLM2's GGUF, dequantised by transformers: tokenizer and chat template come from the file, so the
    prompt has as many tokens as llama.cpp counts, and greedy decoding of the same weights says the same."""
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")
    messages = [Message(role="user", content="Name one colour of the sky.")]
    hf = open_llm("transformers", str(smollm2)).chat(messages, max_tokens=6)
    cpp = open_llm("llamacpp", str(smollm2), n_ctx=512).chat(messages, max_tokens=6)
    assert hf.prompt_tokens == cpp.prompt_tokens and hf.completion_tokens == cpp.completion_tokens == 6
    assert hf.text.strip() == cpp.text.strip() != ""


@pytest.fixture(scope="module")
def tiny_vision_model(tmp_path_factory):
    pytest.importorskip("torchvision", reason="Qwen2-VL's image processor needs torchvision")
    return tiny.llm_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def test_multimodal_model_sees_frames_as_images(tiny_vision_model, tmp_path):
    import cv2

    llm = open_llm("transformers", str(tiny_vision_model))
    assert llm.multimodal
    frame = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    question = "what is in this picture"
    text_only = llm.chat([Message(role="user", content=question)], max_tokens=4)
    with_array = llm.chat([Message(role="user", content=question, images=[frame])], max_tokens=4)
    with_file = llm.chat([Message(role="user", content=question, images=[path])], max_tokens=4)
    # Qwen2-VL resizes 100x120 to 112x112 (its pixel budget): 8x8 patches of 14 px, merged 2x2 -> 16 tokens,
    # plus the vision start/end markers.
    assert with_array.prompt_tokens == text_only.prompt_tokens + 16 + 2
    assert with_file.text == with_array.text and with_file.prompt_tokens == with_array.prompt_tokens
    assert 1 <= with_array.completion_tokens <= 4
