"""Tiny, randomly initialised checkpoints for every foundation-model backend, and chat models (``llm_*``) for the
transformers LLM backend, written in each backend's real on-disk layout so that the real loaders, processors and
post-processing run end to end without any download.

``build(backend, folder)`` writes one, with the builder that ``backends.yaml`` names for the backend, and returns
the path to pass as ``weights``. Used by ``anomalens doctor --tiny`` and the tests; the outputs are noise, the code
paths are the real ones.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIALS_CLIP = ["<pad>", "<|startoftext|>", "<|endoftext|>"]  # bos must not be id 0: OWLv2 masks id-0 queries


def _byte_vocab(specials: list[str], suffix: str | None = None) -> dict[str, int]:
    """Every byte-level character (and its end-of-word form): any text tokenises, with no merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {token: i for i, token in enumerate(specials)}
    for char in ByteLevel.alphabet():
        for token in (char, char + suffix) if suffix else (char,):
            vocab.setdefault(token, len(vocab))
    return vocab


def _byte_tokenizer(specials: list[str], **special_tokens):
    """A byte-level BPE tokenizer with no merges (one token per byte) for models without a tokenizer class."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    unknown = special_tokens.get("unk_token")
    backend = Tokenizer(models.BPE(vocab=_byte_vocab(specials), merges=[], unk_token=unknown))
    backend.pre_tokenizer, backend.decoder = ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(SPECIALS_CLIP, "</w>"), merges=[])


def _clip_text(vocab_size: int, positions: int = 77) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _decoder(vocab_size: int, **token_ids) -> dict:
    """A 2-layer, 32-wide language model's config over ``vocab_size`` tokens, with its special ``token_ids``."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **token_ids,
    )


def _vision(image_size: int, patch_size: int) -> dict:
    return dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )


def clip_transformers(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _clip_tokenizer()
    config = CLIPConfig(text_config=_clip_text(len(tokenizer)), vision_config=_vision(32, 8), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def clip_siglip(folder: Path) -> Path:
    """SigLIP for the same backend as CLIP (``clip:transformers``), with a byte-level tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = _byte_tokenizer(
        ["<pad>", "</s>", "<unk>"], eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=16
    )
    text = _clip_text(len(tokenizer), 16) | {"pad_token_id": 1, "bos_token_id": None, "eos_token_id": 1}
    SiglipModel(SiglipConfig(text_config=text, vision_config=_vision(32, 8))).save_pretrained(folder)
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def clip_open_clip(folder: Path) -> Path:
    import open_clip
    import torch

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.CLIP(**model_cfg)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def detector_grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin",
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=4,
            image_size=64,
            out_features=["stage2", "stage3", "stage4"],
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=len(words),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def detector_owlv2(folder: Path) -> Path:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = _clip_tokenizer()
    # The class head compares image embeddings (text width) with projected queries: projection = text width.
    config = Owlv2Config(text_config=_clip_text(len(tokenizer), 16), vision_config=_vision(64, 16), projection_dim=32)
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    image_processor = Owlv2ImageProcessor(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def segmenter_sam(folder: Path) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=64,
            patch_size=16,
            output_channels=16,
            window_size=2,
            global_attn_indexes=[1],
            mlp_dim=37,
            num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, image_embedding_size=4),
        mask_decoder_config=dict(
            hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    SamModel(config).save_pretrained(folder)
    image_processor = SamImageProcessor(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


def segmenter_segment_anything(folder: Path) -> Path:
    """A tiny ViT in the original checkpoint format, named as the loader expects (``sam_vit_*.pth``), with its
    architecture in ``sam_config.json``."""
    import torch
    from segment_anything.build_sam import _build_sam

    architecture = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])
    model = _build_sam(**architecture)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sam_config.json").write_text(json.dumps(architecture))
    torch.save(model.state_dict(), folder / "sam_vit_tiny.pth")
    return folder


def captioner_transformers(folder: Path) -> Path:
    """A LLaVA-architecture VLM (CLIP vision tower, Llama decoder) with a byte-level tokenizer."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _byte_tokenizer(
        ["<pad>", "<s>", "</s>", "<image>"],
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    vocab = tokenizer.get_vocab()
    template = (
        "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **_vision(32, 8)),
        text_config=dict(model_type="llama", **_decoder(len(vocab), pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        image_token_index=vocab["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        chat_template=template,
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return folder


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chatml_tokenizer(text: str, extra_special: tuple[str, ...] = (), **options):
    """A byte-level BPE tokenizer trained on ``text``, with ChatML's turn markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([text] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="<|im_end|>", **options)


def llm_llama(folder: Path) -> Path:
    """A chat model for the transformers LLM backend: a 2-layer Llama with a ChatML tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _chatml_tokenizer("a person walks on the walkway at two metres per second", chat_template=CHATML)
    config = LlamaConfig(
        **_decoder(len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=None), max_position_embeddings=256
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def llm_qwen2_vl(folder: Path) -> Path:
    """A multimodal chat model for the transformers LLM backend: a Qwen2-VL (vision tower and language model) with
    its real processor, which sizes images to at most 112x112 pixels."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    vision = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tokenizer = _chatml_tokenizer("what is in this picture of a walkway", vision, pad_token="<unk>")
    ids = dict(zip(vision, tokenizer.convert_tokens_to_ids(vision)))
    text = _decoder(len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=None, max_position_embeddings=512)
    config = Qwen2VLConfig(
        text_config=dict(**text, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2,
        ),  # fmt: skip
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT,
    ).save_pretrained(folder)
    return folder


def build(backend: str, folder: str | Path) -> Path:
    """Write a tiny random checkpoint for ``backend`` into ``folder`` (with the builder ``backends.yaml`` names
    for it); return what to load it from."""
    from anomalens import registry

    entry = registry.get(backend)
    if entry.tiny is None:
        raise KeyError(f"no tiny checkpoint for {backend!r}: {entry.not_built or 'none is described'}")
    import torch

    torch.manual_seed(0)
    return globals()[entry.tiny](Path(folder))


def check(backend: str, folder: str | Path) -> str:
    """Build ``backend``'s tiny checkpoint in ``folder``, load it with the real loader and run one inference on a
    synthetic frame; return what came out (raises on any failure)."""
    from anomalens import registry

    return exercise(backend, registry.load(backend).load(build(backend, folder)))


def exercise(backend: str, tool) -> str:
    """Run a loaded ``tool`` of ``backend`` once on a synthetic frame; a line saying what came out."""
    import numpy as np

    frame = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    kind = backend.split(":")[0]
    if kind == "clip":
        from anomalens.tools.clip import ClipScorer

        evidence = ClipScorer(tool).score(frame)
        height, width = evidence.anomaly_map.shape
        return f"anomaly score {evidence.frame_score:.3f}, map {width}x{height}"
    if kind == "detector":
        evidence = tool.detect(frame, ["a person", "a car"], box_threshold=0.0)
        return f"{len(evidence)} boxes"
    if kind == "segmenter":
        evidence = tool.segment(frame, boxes=np.array([[8.0, 8.0, 40.0, 40.0]]))
        return f"mask {evidence.masks.shape[2]}x{evidence.masks.shape[1]}, {int(evidence.masks.sum())} px"
    if kind == "pose":
        return f"{len(tool.estimate(frame, threshold=0.0))} people"
    if kind == "embedder":
        return f"{tool.embed(frame).embeddings.shape[1]}-d embedding"
    evidence = tool.caption(frame, max_new_tokens=4)
    return f"caption of {len(evidence.text)} characters"
