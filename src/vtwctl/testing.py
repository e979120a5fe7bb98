"""Tiny random vision-language models of every supported family, built from configs.

Used by the tests and the benchmarks (no downloads): ``tiny_model(family)`` returns a stock
transformers model with random weights, and ``tiny_inputs(model, ...)`` a batch of model inputs
whose ``input_ids`` hold exactly as many vision tokens as the model's vision tower produces.
"""

from __future__ import annotations

from typing import Any

FAMILIES = ("llava", "llava_next", "video_llava", "llava_onevision", "qwen2_vl", "qwen2_5_vl")

# Token ids shared by the tiny models (vocabulary of 256).
VOCAB = 256
IMAGE_ID, VIDEO_ID = 250, 251
VSTART_ID, VEND_ID = 252, 253
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def _llama_text(**kw: Any) -> dict:
    cfg = dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=PAD_ID,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False,
    )
    cfg.update(kw)
    return cfg


def _qwen2_text(**kw: Any) -> dict:
    cfg = _llama_text(model_type="qwen2", **kw)
    return cfg


def _clip_vision(**kw: Any) -> dict:
    cfg = dict(
        model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32,
    )
    cfg.update(kw)
    return cfg


def tiny_config(family: str, num_layers: int = 6, hidden: int = 64, **text_kw: Any):
    """A small config of ``family`` (a transformers ``model_type``)."""
    import transformers as tf

    text = dict(num_hidden_layers=num_layers, hidden_size=hidden, **text_kw)
    if family == "llava":
        return tf.LlavaConfig(
            text_config=_llama_text(**text), vision_config=_clip_vision(), image_token_id=IMAGE_ID,
            projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
    if family == "llava_next":
        return tf.LlavaNextConfig(
            text_config=_llama_text(**text), vision_config=_clip_vision(), image_token_id=IMAGE_ID,
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
    if family == "video_llava":
        return tf.VideoLlavaConfig(
            text_config=_llama_text(**text), vision_config=_clip_vision(), image_token_id=IMAGE_ID,
            video_token_id=VIDEO_ID, vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
    if family == "llava_onevision":
        return tf.LlavaOnevisionConfig(
            text_config=_qwen2_text(**text),
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=32, patch_size=8,
            ),
            image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_feature_layer=-1,
            vision_feature_select_strategy="full", image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
            vision_aspect_ratio="anyres_max_9",
        )
    if family in ("qwen2_vl", "qwen2_5_vl"):
        cls = tf.Qwen2VLConfig if family == "qwen2_vl" else tf.Qwen2_5_VLConfig
        heads = 4
        head_dim = hidden // heads
        section = [head_dim // 4, head_dim // 8, head_dim // 8]  # sums to head_dim / 2
        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
        if family == "qwen2_5_vl":
            vision = dict(depth=2, hidden_size=32, out_hidden_size=hidden, num_heads=2, intermediate_size=64,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                          fullatt_block_indexes=[1], in_channels=3)
        text_cfg = dict(
            vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False,
        )
        text_cfg.update(text_kw)
        return cls(
            text_config=text_cfg, vision_config=vision, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
            vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def tiny_model(family: str, attn_implementation: str = "sdpa", seed: int = 0, **kw: Any):
    """A randomly initialised stock model of ``family`` in fp32, eval mode."""
    import torch
    import transformers as tf

    config = tiny_config(family, **kw)
    cls = {
        "llava": tf.LlavaForConditionalGeneration,
        "llava_next": tf.LlavaNextForConditionalGeneration,
        "video_llava": tf.VideoLlavaForConditionalGeneration,
        "llava_onevision": tf.LlavaOnevisionForConditionalGeneration,
        "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
    }[family]
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    model = cls(config).eval()
    # Random init gives tiny logits; sharpen the text embeddings a little so greedy decoding is not a tie.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None
    return model


def _image_pixels(family: str, size: tuple[int, int], gen) -> dict:
    """Pixel inputs of one image of ``size`` (h, w) for ``family``; values are random."""
    import torch

    h, w = size
    if family == "llava":
        return {"pixel_values": torch.randn(1, 3, 32, 32, generator=gen)}
    if family == "video_llava":
        return {"pixel_values_images": torch.randn(1, 3, 32, 32, generator=gen)}
    if family in ("llava_next", "llava_onevision"):
        # base image + up to 4 AnyRes tiles (the model reads the real count from image_sizes)
        return {"pixel_values": torch.randn(1, 5, 3, 32, 32, generator=gen), "image_sizes": torch.tensor([[h, w]])}
    # qwen: h, w are the patch grid (multiples of the 2x2 merge)
    return {
        "pixel_values": torch.randn(h * w * 1, 3 * 2 * 14 * 14, generator=gen),
        "image_grid_thw": torch.tensor([[1, h, w]]),
    }


def _video_pixels(family: str, gen) -> dict:
    import torch

    if family == "video_llava":
        return {"pixel_values_videos": torch.randn(1, 8, 3, 32, 32, generator=gen)}
    if family == "llava_onevision":
        return {"pixel_values_videos": torch.randn(1, 4, 3, 32, 32, generator=gen)}
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return {"pixel_values_videos": torch.randn(2 * 4 * 4, 3 * 2 * 14 * 14, generator=gen),
                "video_grid_thw": torch.tensor([[2, 4, 4]])}
    raise ValueError(f"{family} takes no video")


def count_vision_tokens(model, pixels: dict, video: bool = False) -> int:
    """How many sequence positions the vision tower's output for ``pixels`` occupies."""
    import torch

    mm = model.model
    with torch.no_grad():
        if video:
            kw = {k: v for k, v in pixels.items() if "video" in k}
            out = mm.get_video_features(**kw, return_dict=True).pooler_output
        else:
            kw = dict(pixels)
            if "pixel_values_images" in kw:
                kw = {"pixel_values_images": kw["pixel_values_images"]}
            out = mm.get_image_features(**kw, return_dict=True).pooler_output
    if isinstance(out, (list, tuple)):
        return sum(int(o.shape[0]) for o in out)
    return int(out.shape[0] * out.shape[1]) if out.ndim == 3 else int(out.shape[0])


def tiny_inputs(model, rows: list[dict] | None = None, padding: str = "left", seed: int = 0) -> dict:
    """A padded batch for ``model`` built from row specs.

    Each row is a dict with ``pre`` (system tokens before the vision block), ``post`` (instruction
    tokens after it), ``image`` (None, or an image size (h, w): pixels for LLaVA-NeXT/OneVision,
    merge-grid patches for Qwen) and ``video`` (bool). Returns the model inputs, with
    ``attention_mask`` marking padding. Vision tokens are exactly as many as the tower produces.
    """
    import torch

    family = model.config.model_type
    rows = rows or [{"pre": 5, "post": 7, "image": (32, 64)}]
    gen = torch.Generator().manual_seed(seed)
    seqs, images, videos = [], [], []
    for row in rows:
        toks = [BOS_ID] + torch.randint(3, 200, (row.get("pre", 4),), generator=gen).tolist()
        for kind in ("image", "video"):
            spec = row.get(kind)
            if not spec:
                continue
            if kind == "image":
                px = _image_pixels(family, spec if isinstance(spec, tuple) else (32, 32), gen)
                images.append(px)
                n, tok = count_vision_tokens(model, px), IMAGE_ID
            else:
                px = _video_pixels(family, gen)
                videos.append(px)
                n, tok = count_vision_tokens(model, px, video=True), VIDEO_ID
            block = [tok] * n
            if family in ("qwen2_vl", "qwen2_5_vl"):
                block = [VSTART_ID] + block + [VEND_ID]
            toks += block
        toks += torch.randint(3, 200, (row.get("post", 6),), generator=gen).tolist()
        seqs.append(toks)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if padding == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    out: dict = {"input_ids": ids, "attention_mask": mask}
    for group in (images, videos):
        for key in sorted({k for px in group for k in px}):
            parts = [px[key] for px in group]
            out[key] = torch.cat(parts, 0)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        out["mm_token_type_ids"] = (ids == IMAGE_ID).int() + 2 * (ids == VIDEO_ID).int()
    return out


_WORDS = ("user assistant what is the colour shape of a an in on image picture there red green blue yellow "
          "circle square triangle yes no one two three how many left right top bottom answer question "
          "with option letter from given choices directly using single word or phrase context").split()


def tiny_tokenizer():
    """A word-level fast tokenizer over a small vocabulary whose ids fit the tiny models."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, "<unk>": 3}
    for w in list(_WORDS) + [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,:?!()"]:
        vocab.setdefault(w, len(vocab))
    vocab["<image>"], vocab["<video>"] = IMAGE_ID, VIDEO_ID
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    return fast


LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def save_tiny_llava(path, num_layers: int = 6, seed: int = 0) -> None:
    """Write a tiny random LLaVA with a working LlavaProcessor to ``path`` (like save_pretrained)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    model = tiny_model("llava", num_layers=num_layers, seed=seed)
    model.generation_config.eos_token_id = EOS_ID
    model.save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                         do_center_crop=True)
    proc = LlavaProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_TEMPLATE)
    proc.save_pretrained(path)

