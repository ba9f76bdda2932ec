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


def chatml_tokenizer(text: str, extra_special: tuple[str, ...] = (), **options):
    """A byte-level BPE tokenizer trained here on ``text``, with ChatML's turn markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([text] * 20, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", eos_token="<|im_end|>", **options
    )


def tiny_text_config(tokenizer) -> dict:
    """A 2-layer, 32-wide language model over ``tokenizer``'s vocabulary."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A 2-layer Llama with random weights and a byte-level BPE tokenizer trained here, saved as a folder."""
    import torch

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = chatml_tokenizer("a person walks on the walkway at two metres per second", chat_template=CHATML)
    config = transformers.LlamaConfig(**tiny_text_config(tokenizer), max_position_embeddings=256)
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
    """A tiny random Qwen2-VL (vision tower + language model) with its real processor, saved as a folder."""
    import torch

    pytest.importorskip("torchvision", reason="Qwen2-VL's image processor needs torchvision")
    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    vision = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tokenizer = chatml_tokenizer("what is in this picture of a walkway", vision, pad_token="<unk>")
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        video_processor=transformers.Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=template,
    )
    ids = dict(zip(vision, tokenizer.convert_tokens_to_ids(vision)))
    config = transformers.Qwen2VLConfig(
        text_config=dict(
            **tiny_text_config(tokenizer),
            max_position_embeddings=512,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=32,
            num_heads=4,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    transformers.Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


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
