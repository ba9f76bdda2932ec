"""The transformers backend: a tiny random chat model built from a config (real tokenizer, chat template and
generate path, no download), and a real GGUF file dequantised by transformers."""

from __future__ import annotations

import numpy as np
import pytest

from anomalens.agents.llm import Message, ToolSpec, open_llm
from anomalens.errors import LLMError

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A 2-layer Llama with random weights and a byte-level BPE tokenizer trained here, saved as a folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(["a person walks on the walkway at two metres per second"] * 20, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", eos_token="<|im_end|>", chat_template=CHATML
    )
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
