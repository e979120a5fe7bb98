"""Tiny configs and pixel inputs for every family the test suite covers (vocabulary of 256 tokens).

Each ``Tiny`` entry builds a config of a few hundred thousand parameters (6 decoder layers of width
64 by default) whose vision tower is just as small, and random pixel inputs in the layout the
family's stock ``get_image_features`` expects. Nothing here is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VOCAB = 256
IMAGE_ID, VIDEO_ID = 250, 251
VSTART_ID, VEND_ID = 252, 253
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VQ_FIRST, VQ_CODES = 200, 16  # the VQ families' visual vocabulary: ids 200..215 (216: Emu3's end of line)


def text_cfg(model_type: str = "llama", layers: int = 6, hidden: int = 64, **kw: Any) -> dict:
    cfg = dict(model_type=model_type, vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
               num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
               max_position_embeddings=4096, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
               tie_word_embeddings=False)
    cfg.update(kw)
    return cfg


def siglip(**kw: Any) -> dict:
    cfg = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=32, patch_size=8)
    cfg.update(kw)
    return cfg


def clip(**kw: Any) -> dict:
    cfg = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32)
    cfg.update(kw)
    return cfg


_SMALL_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
_QWEN_VIT = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                 temporal_patch_size=2)
_ANYRES = [[32, 32], [32, 64], [64, 32], [64, 64]]


@dataclass(frozen=True)
class Tiny:
    """How to build one family's tiny model and inputs."""

    config: Callable[..., Any]  # (text kwargs) -> config
    image: str  # pixel layout, see image_pixels
    video: str | None = None  # video layout, see video_pixels
    markers: bool = False  # frame each vision block with VSTART/VEND (M-RoPE families need them)
    token_types: str | None = None  # extra per-token input: "mm" (Qwen/GLM), "image" (Gemma 3), "prefix"


def _tf():
    import transformers

    return transformers


def _mrope(family: str, interleaved: bool, **t: Any) -> dict:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    if interleaved:
        rope["mrope_interleaved"] = True
    return text_cfg(family, rope_parameters=rope, **t)


def _qwen2(family: str, **t: Any):
    tf = _tf()
    hidden = t.get("hidden", 64)
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2)
        cls = tf.Qwen2VLConfig
    else:
        vision = dict(_QWEN_VIT, out_hidden_size=hidden, window_size=56, fullatt_block_indexes=[1])
        cls = tf.Qwen2_5_VLConfig
    head = hidden // 4
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [head // 4, head // 8, head // 8]}
    return cls(text_config=text_cfg(family, rope_parameters=rope, **t), vision_config=vision, image_token_id=IMAGE_ID,
               video_token_id=VIDEO_ID, vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID)


def _qwen3(family: str, **t: Any):
    tf = _tf()
    text = _mrope(f"{family}_text", True, **t)
    if family == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    cls = tf.Qwen3VLConfig if family == "qwen3_vl" else tf.Qwen3VLMoeConfig
    vision = dict(_QWEN_VIT, depth=3, patch_size=16, out_hidden_size=text["hidden_size"], num_position_embeddings=16,
                  deepstack_visual_indexes=[0, 1, 2])
    return cls(text_config=text, vision_config=vision, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
               vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID)


def _glm4v(family: str, **t: Any):
    tf = _tf()
    text = _mrope(f"{family}_text", False, **t)
    text["rope_parameters"]["partial_rotary_factor"] = 1.0
    if family == "glm4v_moe":
        text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
                    n_shared_experts=1, n_group=1, topk_group=1)
    cls = tf.Glm4vConfig if family == "glm4v" else tf.Glm4vMoeConfig
    vision = dict(_QWEN_VIT, image_size=28, out_hidden_size=text["hidden_size"])
    return cls(text_config=text, vision_config=vision, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
               image_start_token_id=VSTART_ID, image_end_token_id=VEND_ID, video_start_token_id=VSTART_ID,
               video_end_token_id=VEND_ID)


def _llava(family: str, **t: Any):
    tf = _tf()
    common = dict(vision_feature_layer=-2, vision_feature_select_strategy="default")
    if family == "llava":
        return tf.LlavaConfig(text_config=text_cfg(**t), vision_config=clip(), image_token_id=IMAGE_ID,
                              projector_hidden_act="gelu", **common)
    if family == "llava_next":
        return tf.LlavaNextConfig(text_config=text_cfg(**t), vision_config=clip(), image_token_id=IMAGE_ID,
                                  image_grid_pinpoints=_ANYRES, **common)
    if family == "llava_next_video":
        return tf.LlavaNextVideoConfig(text_config=text_cfg(**t), vision_config=clip(), image_token_index=IMAGE_ID,
                                       video_token_index=VIDEO_ID, image_grid_pinpoints=_ANYRES,
                                       spatial_pool_stride=2, **common)
    if family == "video_llava":
        return tf.VideoLlavaConfig(text_config=text_cfg(**t), vision_config=clip(), image_token_id=IMAGE_ID,
                                   video_token_id=VIDEO_ID, **common)
    if family == "vipllava":
        return tf.VipLlavaConfig(text_config=text_cfg(**t), vision_config=clip(), image_token_index=IMAGE_ID,
                                 vision_feature_layers=[-2, -1])
    return tf.LlavaOnevisionConfig(
        text_config=text_cfg("qwen2", **t), vision_config=siglip(), image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_feature_layer=-1, vision_feature_select_strategy="full", image_grid_pinpoints=_ANYRES,
        vision_aspect_ratio="anyres_max_9")


def _gemma(family: str, sliding_window: int | None = None, **t: Any):
    tf = _tf()
    if family == "gemma3":
        text = text_cfg("gemma3_text", query_pre_attn_scalar=t.get("hidden", 64) // 4,
                        sliding_window=sliding_window or 4096, sliding_window_pattern=3, **t)
        return tf.Gemma3Config(text_config=text, vision_config=siglip(), mm_tokens_per_image=4,
                               image_token_index=IMAGE_ID, boi_token_index=VSTART_ID, eoi_token_index=VEND_ID,
                               tie_word_embeddings=False)
    hidden = t.get("hidden", 64)
    return tf.PaliGemmaConfig(text_config=text_cfg("gemma", **t), vision_config=siglip(projection_dim=hidden),
                              image_token_index=IMAGE_ID, projection_dim=hidden, hidden_size=hidden, vocab_size=VOCAB,
                              tie_word_embeddings=False)


def _cohere(family: str, sliding_window: int | None = None, **t: Any):
    tf = _tf()
    text = text_cfg("cohere2", sliding_window=sliding_window or 4096, **t)
    if family == "aya_vision":
        return tf.AyaVisionConfig(text_config=text, vision_config=siglip(), image_token_index=IMAGE_ID,
                                  downsample_factor=2, tie_word_embeddings=False)
    return tf.Cohere2VisionConfig(text_config=text, vision_config=siglip(), image_token_id=IMAGE_ID,
                                  downsample_factor=2, alignment_intermediate_size=64, tie_word_embeddings=False)


def _mistral3(family: str, sliding_window: int | None = None, **t: Any):
    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, head_dim=16, image_size=64, patch_size=8)
    return _tf().Mistral3Config(text_config=text_cfg("mistral", sliding_window=sliding_window, **t),
                                vision_config=vision, image_token_index=IMAGE_ID, spatial_merge_size=2,
                                tie_word_embeddings=False)


def _idefics(family: str, sliding_window: int | None = None, **t: Any):
    tf = _tf()
    if family == "idefics2":
        return tf.Idefics2Config(
            text_config=text_cfg("mistral", sliding_window=sliding_window, **t), vision_config=_SMALL_VIT,
            perceiver_config=dict(hidden_size=t.get("hidden", 64), resampler_n_latents=4, resampler_depth=1,
                                  resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
            image_token_id=IMAGE_ID)
    cls = tf.Idefics3Config if family == "idefics3" else tf.SmolVLMConfig
    return cls(text_config=text_cfg(**t), image_token_id=IMAGE_ID, scale_factor=2, vision_config=_SMALL_VIT)


def _others(family: str, **t: Any):
    tf = _tf()
    if family == "internvl":
        return tf.InternVLConfig(text_config=text_cfg("qwen2", **t), vision_config=_SMALL_VIT,
                                 image_token_id=IMAGE_ID, image_seq_length=4, downsample_ratio=0.5)
    if family == "got_ocr2":
        vision = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                      patch_size=8, window_size=2, global_attn_indexes=[1], mlp_dim=64)
        return tf.GotOcr2Config(text_config=text_cfg("qwen2", **t), vision_config=vision,
                                image_token_index=IMAGE_ID, image_seq_length=4)
    if family == "janus":
        hidden = t.get("hidden", 64)
        return tf.JanusConfig(
            text_config=text_cfg(**t),
            vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                               patch_size=8, num_image_tokens=16, projection_dim=hidden, mlp_ratio=2.0),
            vq_config=dict(embed_dim=8, num_embeddings=32, latent_channels=32, base_channels=32,
                           channel_multiplier=[1, 1], num_res_blocks=1, num_patches=4, projection_dim=hidden,
                           image_token_embed_dim=hidden),
            image_token_id=IMAGE_ID)
    if family == "kimi_k25":
        text = text_cfg("deepseek_v3", **t)
        text.update(head_dim=8, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                    qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=32, first_k_dense_replace=1, n_shared_experts=1, n_group=1, topk_group=1)
        return tf.Kimi_K25Config(
            text_config=text, projection_hidden_size=32, tie_word_embeddings=False,
            vision_config=dict(patch_size=14, pos_emb_height=8, pos_emb_width=8, pos_emb_time=2,
                               num_attention_heads=2, num_hidden_layers=2, hidden_size=32, intermediate_size=64),
            image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VSTART_ID,
            vision_end_token_id=VEND_ID)
    if family == "emu3":
        vocab = {f"<|visual token{i:06d}|>": VQ_FIRST + i for i in range(VQ_CODES)}
        vocab.update({"<image>": IMAGE_ID, "<|extra_200|>": VQ_FIRST + VQ_CODES})
        return tf.Emu3Config(text_config=text_cfg("emu3_text_model", attention_dropout=0.0, **t),
                             vq_config=dict(codebook_size=VQ_CODES, temporal_downsample_factor=1, base_channels=32,
                                            channel_multiplier=[1, 2, 1], hidden_size=32, attn_resolutions=[],
                                            num_res_blocks=1),
                             vocabulary_map=vocab)
    if family == "chameleon":
        letters = "ABCDEFGHIJ"
        vocab = {"IMGIMG" + "".join(letters[int(c)] for c in str(i)) + "Z": VQ_FIRST + i for i in range(VQ_CODES)}
        vocab["<image>"] = IMAGE_ID
        text = text_cfg(**t)
        text.pop("model_type")
        return tf.ChameleonConfig(**text, vocabulary_map=vocab,
                                  vq_config=dict(embed_dim=8, num_embeddings=VQ_CODES, latent_channels=8,
                                                 resolution=32, base_channels=32, channel_multiplier=[1, 1, 1, 1],
                                                 num_res_blocks=1, attn_resolutions=None))
    if family == "llama4":
        hidden = t.get("hidden", 64)
        text = text_cfg("llama4_text", intermediate_size_mlp=2 * hidden, num_local_experts=2, num_experts_per_tok=1,
                        attention_chunk_size=8192, no_rope_layer_interval=3, interleave_moe_layer_step=2, **t)
        vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      vision_output_dim=32, image_size=32, patch_size=8, pixel_shuffle_ratio=0.5,
                      projector_input_dim=32, projector_output_dim=32)
        return tf.Llama4Config(text_config=text, vision_config=vision, image_token_index=IMAGE_ID,
                               boi_token_index=VSTART_ID, eoi_token_index=VEND_ID)
    raise KeyError(family)


def _entry(builder, image, video=None, markers=False, token_types=None, windowed=False):
    def config(family, layers=6, hidden=64, sliding_window=None, **kw):
        extra = dict(sliding_window=sliding_window) if windowed else {}
        return builder(family, layers=layers, hidden=hidden, **extra, **kw)
    return Tiny(config=config, image=image, video=video, markers=markers, token_types=token_types)


TINY: dict[str, Tiny] = {
    "llava": _entry(_llava, "clip"),
    "llava_next": _entry(_llava, "anyres"),
    "llava_next_video": _entry(_llava, "anyres", video="frames4"),
    "video_llava": _entry(_llava, "images", video="frames8"),
    "llava_onevision": _entry(_llava, "anyres", video="frames4"),
    "vipllava": _entry(_llava, "clip"),
    "qwen2_vl": _entry(_qwen2, "patches", video="patches", markers=True, token_types="mm"),
    "qwen2_5_vl": _entry(_qwen2, "patches", markers=True, token_types="mm"),
    "qwen3_vl": _entry(_qwen3, "patches16", markers=True, token_types="mm"),
    "qwen3_vl_moe": _entry(_qwen3, "patches16", markers=True, token_types="mm"),
    "glm4v": _entry(_glm4v, "patches", markers=True, token_types="mm"),
    "glm4v_moe": _entry(_glm4v, "patches", markers=True, token_types="mm"),
    "gemma3": _entry(_gemma, "clip", token_types="image", windowed=True),
    "paligemma": _entry(_gemma, "clip", token_types="prefix"),
    "aya_vision": _entry(_cohere, "clip", windowed=True),
    "cohere2_vision": _entry(_cohere, "clip", windowed=True),
    "mistral3": _entry(_mistral3, "sized", windowed=True),
    "idefics2": _entry(_idefics, "stacked", windowed=True),
    "idefics3": _entry(_idefics, "stacked"),
    "smolvlm": _entry(_idefics, "stacked"),
    "internvl": _entry(_others, "clip"),
    "got_ocr2": _entry(_others, "big"),
    "janus": _entry(_others, "clip"),
    "kimi_k25": _entry(_others, "kimi", markers=True),
    "emu3": _entry(_others, "emu3"),
    "chameleon": _entry(_others, "clip"),
    "llama4": _entry(_others, "clip"),
}


def image_pixels(family: str, size: tuple[int, int] | None, gen) -> dict:
    """Pixel inputs of one image for ``family``. ``size`` is (h, w) in pixels for AnyRes/Pixtral, in merged
    patches for the patch-grid families (Qwen, GLM, Kimi), ignored otherwise; values are random."""
    import torch

    layout = TINY[family].image
    r = lambda *shape: torch.randn(*shape, generator=gen)
    if layout == "clip":
        return {"pixel_values": r(1, 3, 32, 32)}
    if layout == "images":
        return {"pixel_values_images": r(1, 3, 32, 32)}
    if layout == "big":
        return {"pixel_values": r(1, 3, 64, 64)}
    if layout == "stacked":
        return {"pixel_values": r(1, 1, 3, 32, 32)}
    if layout == "emu3":
        return {"pixel_values": r(1, 3, 16, 16), "image_sizes": torch.tensor([[16, 16]])}
    if layout == "anyres":  # base image + up to 4 tiles (the model reads the real count from image_sizes)
        h, w = size or (32, 32)
        return {"pixel_values": r(1, 5, 3, 32, 32), "image_sizes": torch.tensor([[h, w]])}
    if layout == "sized":
        h, w = size or (32, 48)
        return {"pixel_values": r(1, 3, h, w), "image_sizes": torch.tensor([[h, w]])}
    h, w = size or (4, 4)  # patch grids: multiples of the 2x2 merge
    if layout == "kimi":
        return {"pixel_values": r(h * w, 3, 14, 14), "image_grid_thw": torch.tensor([[1, h, w]])}
    patch = 16 if layout == "patches16" else 14
    return {"pixel_values": r(h * w, 3 * 2 * patch * patch), "image_grid_thw": torch.tensor([[1, h, w]])}


def video_pixels(family: str, gen) -> dict:
    import torch

    layout = TINY[family].video
    r = lambda *shape: torch.randn(*shape, generator=gen)
    if layout == "frames8":
        return {"pixel_values_videos": r(1, 8, 3, 32, 32)}
    if layout == "frames4":
        return {"pixel_values_videos": r(1, 4, 3, 32, 32)}
    if layout in ("patches", "patches16"):
        patch = 16 if layout == "patches16" else 14
        return {"pixel_values_videos": r(2 * 4 * 4, 3 * 2 * patch * patch), "video_grid_thw": torch.tensor([[2, 4, 4]])}
    raise ValueError(f"{family} takes no video")
