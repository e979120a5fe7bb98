"""Tiny random VLMs on disk that vLLM's CPU backend can serve (tests and bench; no downloads).

``save_tiny(family, path)`` builds the model from ``vtwctl.testing``'s config with head_dim 32
(vLLM's CPU attention supports head sizes 32, 64, 80, ...), saves it with ``save_pretrained``
together with a word-level tokenizer built offline and the family's own transformers processor,
small enough for a quick test:

- ``llava``: LLaVA-1.5, 32x32 images, 16 vision tokens per image;
- ``llava_next``: LLaVA-NeXT, AnyRes over 32x32 tiles (grid pinpoints 32/64), a 16-token base
  image plus the unpadded tiles with an ``image_newline`` token per row (36 to 88 tokens);
- ``llava_onevision``: LLaVA-OneVision (SigLIP tower, Qwen2 text model), the same AnyRes layout;
- ``qwen2_vl`` / ``qwen2_5_vl``: 14-pixel patches merged 2x2, images resized to 56..112 pixels a
  side (4 to 16 tokens), M-RoPE with sections (8, 4, 4);
- ``mistral3``: Mistral 3 (Pixtral tower, 4-pixel patches merged 2x2), images up to 64 pixels a side
  in 8-pixel steps: per 8 pixels of height a row of ``[IMG]`` (one per 8 pixels of width), then
  ``[IMG_BREAK]`` (``[IMG_END]`` after the last row); the ``[IMG]`` rows are the vision rows;
- ``idefics3`` / ``smolvlm``: image splitting into 32-pixel tiles of an image resized to 64 pixels a
  side (1x2, 2x1 or 2x2 tiles and the global image, 16 ``<image>`` rows each), each tile after
  ``<fake_token_around_image>`` and ``<row_i_col_j>`` (``<global-img>`` for the global one): text rows
  between the vision runs;
- ``llava_next_video``: LLaVA-NeXT-Video, served by vLLM for video only: 32x32 frames in 4-pixel
  patches pooled 2x2, 16 ``<video>`` rows per frame;
- ``qwen3_vl`` / ``qwen3_vl_moe``: 16-pixel patches merged 2x2, images resized to 64..128 pixels
  a side (4 to 16 tokens), interleaved M-RoPE with sections (6, 5, 5), deepstack features after
  text layers 0, 1 and 2 (MoE: 4 experts, 2 per token, every layer);
- ``internvl``: HF-format InternVL (Qwen2 text model), 32x32 tiles (up to 4, plus a thumbnail when
  there are several) of 4 tokens each, ``<IMG_CONTEXT>`` rows between ``<img>`` and ``</img>``
  (4 to 20 vision tokens); untied lm_head; no BOS (as Qwen2's tokenizer);
- ``gemma3``: Gemma 3, 32x32 images of 16 ``<image_soft_token>`` rows between ``<start_of_image>``
  and ``<end_of_image>`` (and the ``\n\n`` tokens vLLM's processor looks up), sliding window
  ``GEMMA_WINDOW`` (256) on layers 0, 1, 3, 4, a random image projection (transformers starts it at
  zero). VTW is refused on it (``vtwctl.integrations.vllm.WHY_UNVERIFIED``).

The text layers' attention is sharpened (q/k x4, output x6; where q and k are normalised per head,
Qwen3 and Gemma 3, the norms' gains x4 instead) and Qwen's vision merger outputs (Qwen3: and its
deepstack mergers') scaled x20 (Mistral 3's projector output x100), so that greedy tokens depend on
the vision tokens and on the text positions. LLaVA-family weights are stored under the hub
checkpoints' names (``language_model.model.*``, ``vision_tower.vision_model.*``), which both
transformers and stock vLLM load; Qwen, InternVL, Mistral 3 and Idefics3/SmolVLM weights keep
transformers' names, which vLLM maps (or reads) itself (Qwen3-VL-MoE's fused experts in the hub
layout, transposed; Gemma 3's SigLIP tower under the hub's names).

Prompts are words ``w3 .. w249`` (ids 3..249, less the ids a family's own special tokens take); the
image placeholder is id 250 (``<image>``; ``[IMG]`` for Mistral 3; ``<|image_pad|>`` between
``<|vision_start|>`` (252) and ``<|vision_end|>`` (253) for Qwen; ``<IMG_CONTEXT>`` between ``<img>``
(252) and ``</img>`` (253) for InternVL; ``<start_of_image>`` (252) for Gemma 3, whose processor
expands it); the video placeholder is id 251.
"""

from __future__ import annotations

import re
from pathlib import Path

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "mistral3", "idefics3", "smolvlm",
            "llava_next_video", "qwen3_vl", "qwen3_vl_moe", "internvl", "gemma3")
WORDS = {f"w{i}": i for i in range(3, 250)}
IMAGE_TOKEN = "<image>"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
GEMMA_IMAGE = "<start_of_image>"  # transformers' Gemma3Processor expands it to BOI + n x <image_soft_token> + EOI
GEMMA_WINDOW = 256  # the Gemma 3 fixture's sliding window: >= the tests' max_model_len, so it never binds
INTERNVL_IMAGE = "<IMG_CONTEXT>"  # transformers' InternVLProcessor expands it to <img> + n x <IMG_CONTEXT> + </img>
# families stored under the hub checkpoints' names (hub_name): those whose vLLM classes read CLIP towers
HUB_NAMES = ("llava", "llava_next", "llava_onevision", "llava_next_video")
VIDEO_ONLY = ("llava_next_video",)  # families vLLM serves for video only: prompt() places a video
# the text tokens around the vision rows: Pixtral's row breaks and end; Idefics3/SmolVLM's tile markers
_PIXTRAL = {"[IMG_BREAK]": 254, "[IMG_END]": 255}
_IDEFICS = {"<fake_token_around_image>": 252, "<global-img>": 253, "<end_of_utterance>": 254,
            "<row_1_col_1>": 246, "<row_1_col_2>": 247, "<row_2_col_1>": 248, "<row_2_col_2>": 249}  # 2x2 tiles at most


def _qwen(family: str) -> bool:
    return family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def _qwen3(family: str) -> bool:
    return family in ("qwen3_vl", "qwen3_vl_moe")


def _idefics(family: str) -> bool:
    return family in ("idefics3", "smolvlm")


def tokenizer(family: str = "llava", vocab_size: int | None = None):
    """A word-level fast tokenizer over the tiny vocabulary (``<s>`` prepended); ``vocab_size`` fills the
    ids past the tiny vocabulary with ``<extraN>`` words, so that every id a larger model emits decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from . import BOS_ID, EOS_ID, IMAGE_ID, PAD_ID, VEND_ID, VIDEO_ID, VOCAB, VSTART_ID

    if _qwen(family):
        specials = {"<|image_pad|>": IMAGE_ID, "<|video_pad|>": VIDEO_ID, "<|vision_start|>": VSTART_ID,
                    "<|vision_end|>": VEND_ID}
        named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    elif family == "mistral3":
        specials = {"[IMG]": IMAGE_ID, **_PIXTRAL}
        named = {"image_token": "[IMG]"}
    elif family == "gemma3":  # vLLM's Gemma 3 processor looks up the newline tokens (never produced here)
        specials = {"<image_soft_token>": IMAGE_ID, GEMMA_IMAGE: VSTART_ID, "<end_of_image>": VEND_ID,
                    "\n": VIDEO_ID, "\n\n": 254, "\n\n\n": 255, "\n\n\n\n": 249}
        named = {"image_token": "<image_soft_token>", "boi_token": GEMMA_IMAGE, "eoi_token": "<end_of_image>"}
    elif family == "internvl":
        specials = {INTERNVL_IMAGE: IMAGE_ID, "<video>": VIDEO_ID, "<img>": VSTART_ID, "</img>": VEND_ID}
        named = {"context_image_token": INTERNVL_IMAGE, "start_image_token": "<img>", "end_image_token": "</img>",
                 "video_token": "<video>"}
    else:
        specials = {IMAGE_TOKEN: IMAGE_ID, "<video>": VIDEO_ID, **(_IDEFICS if _idefics(family) else {})}
        named = {"image_token": IMAGE_TOKEN, "video_token": "<video>"} if family in (
            "llava_onevision", "llava_next_video", "smolvlm") else {"image_token": IMAGE_TOKEN}
    words = {w: i for w, i in WORDS.items() if i not in specials.values()}
    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, **words, **specials}
    vocab.update({f"<extra{i}>": i for i in range(VIDEO_ID + 1, vocab_size or VOCAB) if i not in vocab.values()})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if family != "internvl":  # InternVL's Qwen2 tokenizer adds no BOS (vLLM splices decoded placeholders back in)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<pad>", extra_special_tokens=named,
                                   padding_side="left", model_max_length=4096)
    fast.add_special_tokens({"additional_special_tokens": list(specials)})
    return fast


def _processor(family: str, tok):
    import transformers as tf

    if family == "llava":
        image_processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        return tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                 vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                 image_token=IMAGE_TOKEN, chat_template=None)
    if family == "llava_next":
        image_processor = tf.LlavaNextImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]])
        return tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                     vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                     image_token=IMAGE_TOKEN, chat_template=None)
    if family == "llava_onevision":
        pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
        image_processor = tf.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32},
                                                          image_grid_pinpoints=pinpoints)
        video_processor = tf.LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
        return tf.LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok,
                                          video_processor=video_processor, num_image_tokens=16,
                                          vision_feature_select_strategy="full", chat_template=None)
    if family == "mistral3":  # the processor's patch is the tower's (4) merged 2x2: 8 pixels a token
        image_processor = tf.PixtralImageProcessor(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8})
        return tf.PixtralProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4, spatial_merge_size=2,
                                   image_token="[IMG]", image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]",
                                   chat_template=None)
    if _idefics(family):  # resized to 64 a side, split into 32-pixel tiles (the tower's size) + the global image
        sizes = dict(do_image_splitting=True, size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
        if family == "idefics3":
            return tf.Idefics3Processor(image_processor=tf.Idefics3ImageProcessor(**sizes), tokenizer=tok,
                                        image_seq_len=16, chat_template=None)
        return tf.SmolVLMProcessor(image_processor=tf.SmolVLMImageProcessor(**sizes), tokenizer=tok,
                                   video_processor=tf.SmolVLMVideoProcessor(**sizes), image_seq_len=16,
                                   chat_template=None)
    if family == "llava_next_video":
        image_processor = tf.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                     image_grid_pinpoints=[[32, 32]])
        video_processor = tf.LlavaNextVideoVideoProcessor(size={"shortest_edge": 32},
                                                          crop_size={"height": 32, "width": 32})
        return tf.LlavaNextVideoProcessor(video_processor=video_processor, image_processor=image_processor,
                                          tokenizer=tok, patch_size=4, vision_feature_select_strategy="default",
                                          num_additional_image_tokens=1, chat_template=None)
    if family == "gemma3":  # one 32x32 image of 16 tokens (no pan and scan)
        image_processor = tf.Gemma3ImageProcessor(size={"height": 32, "width": 32}, do_pan_and_scan=False)
        return tf.Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=16,
                                  chat_template=None)
    if family == "internvl":  # 32x32 tiles, up to 4 plus a thumbnail; 4 tokens a tile
        image_processor = tf.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True,
                                                   min_patches=1, max_patches=4)
        video_processor = tf.InternVLVideoProcessor(size={"height": 32, "width": 32})
        return tf.InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                    image_seq_length=4, chat_template=None)
    if _qwen3(family):  # 16-pixel patches merged 2x2: 64..128 pixels a side
        common = dict(size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128}, patch_size=16, merge_size=2,
                      temporal_patch_size=2)
        return tf.Qwen3VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**common), tokenizer=tok,
                                   video_processor=tf.Qwen3VLVideoProcessor(**common), chat_template=None)
    size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    common = dict(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    image_processor = tf.Qwen2VLImageProcessor(**common)
    video_processor = tf.Qwen2VLVideoProcessor(**common)
    cls = tf.Qwen2VLProcessor if family == "qwen2_vl" else tf.Qwen2_5_VLProcessor
    return cls(image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=None)


def save_tiny(family: str, path: str | Path, num_layers: int = 6, seed: int = 0, head_dim: int = 32) -> Path:
    """Write the tiny ``family`` model (model, tokenizer, processor) to ``path``; returns it."""
    import torch
    from safetensors.torch import load_file, save_file

    from . import tiny_model

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if _qwen3(family):  # 4 heads of 32; M-RoPE sections summing to head_dim / 2, as vLLM requires
        def edit(config):
            config.text_config.rope_parameters.update(mrope_section=[6, 5, 5])
            if family == "qwen3_vl_moe":  # as the hub checkpoints say (transformers always renormalises; vLLM reads it)
                config.text_config.norm_topk_prob = True

        model = _tiny_from_config(family, seed, num_layers=num_layers, hidden=128, edit=edit)
        with torch.no_grad():  # vision embeddings (and deepstack features) as large as the sharpened text ones
            for merger in (model.model.visual.merger, *model.model.visual.deepstack_merger_list):
                merger.linear_fc2.weight.mul_(20.0)
                merger.linear_fc2.bias.mul_(20.0)
    elif _qwen(family):  # 4 heads of 32
        model = tiny_model(family, seed=seed, num_layers=num_layers, hidden=128)
        with torch.no_grad():  # vision embeddings as large as the (sharpened) text ones, so that VTW matters
            model.model.visual.merger.mlp[-1].weight.mul_(20.0)
            model.model.visual.merger.mlp[-1].bias.mul_(20.0)
    elif family in ("mistral3", "idefics3", "smolvlm", "llava_next_video"):
        # 4-pixel patches: runs of 8 (Mistral 3) or 16 (Idefics3/SmolVLM) vision rows between their text rows, so
        # that 8-token chunks hold vision rows only; LLaVA-NeXT-Video: vLLM's pooler needs image_size >= patch ** 2
        model = _tiny_from_config(family, seed, num_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                                  head_dim=32, edit=lambda c: setattr(c.vision_config, "patch_size", 4))
        if family == "mistral3":  # its projector's output is ~1/200 of the text embeddings' size: scaled to about
            with torch.no_grad():  # half of it, so that withdrawing the vision rows matters up to layer N-1
                model.model.multi_modal_projector.linear_2.weight.mul_(100.0)
    elif family == "gemma3":  # 2 heads of 32 (one KV head); 16 tokens an image (4x4 patches, not pooled)
        model = _tiny_from_config(family, seed, num_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                                  head_dim=32, sliding_window=GEMMA_WINDOW,
                                  edit=_gemma3_config)
        with torch.no_grad():  # transformers initialises the projection to zeros: vision would not matter
            proj = model.model.multi_modal_projector.mm_input_projection_weight
            proj.copy_(torch.randn(proj.shape, generator=torch.Generator().manual_seed(seed)))
    elif family == "internvl":  # 2 heads of 32 (one KV head); an lm_head of its own, as the other fixtures
        model = _tiny_from_config(family, seed, num_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                                  head_dim=32, edit=lambda c: setattr(c, "tie_word_embeddings", False))
    else:  # 2 heads of 32 (one KV head; ``head_dim`` 80 selects vLLM's "vec16" CPU attention kernel)
        model = tiny_model(family, seed=seed, num_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=head_dim)
    _sharpen(model)
    model.save_pretrained(path)
    _processor(family, tokenizer(family)).save_pretrained(path)
    if family in HUB_NAMES:
        for file in path.glob("*.safetensors"):
            weights = load_file(file)
            renamed = {hub_name(k): v.contiguous() for k, v in weights.items()}
            save_file(renamed, file, metadata={"format": "pt"})
    if family == "gemma3":  # the SigLIP tower under the hub checkpoints' names (transformers 5 drops ``vision_model.``)
        for file in path.glob("*.safetensors"):
            weights = load_file(file)
            hub = {re.sub(r"^((?:model\.)?vision_tower)\.(?!vision_model\.)", r"\1.vision_model.", k):
                   v.contiguous() for k, v in weights.items()}
            save_file(hub, file, metadata={"format": "pt"})
    if family == "qwen3_vl_moe":  # fused experts in the hub layout: transformers transposes them on load, vLLM reads it
        for file in path.glob("*.safetensors"):
            weights = load_file(file)
            hub = {k: (v.transpose(1, 2) if re.search(r"mlp\.experts\.(gate_up|down)_proj$", k) else v).contiguous()
                   for k, v in weights.items()}
            save_file(hub, file, metadata={"format": "pt"})
    torch.manual_seed(seed)
    return path


def _tiny_from_config(family: str, seed: int, edit=None, **kw):
    """``vtwctl.testing.tiny_model``, with ``edit(config)`` applied to the config before the weights are made."""
    import torch
    import transformers as tf

    from ..engine.families import adapter_for
    from . import PAD_ID, tiny_config

    config = tiny_config(family, **kw)
    if edit is not None:
        edit(config)
    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    model = getattr(tf, adapter_for(config).model_class)(config).eval()
    with torch.no_grad():  # as tiny_model
        model.get_input_embeddings().weight.mul_(20.0)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None
    return model


def _gemma3_config(config) -> None:
    config.mm_tokens_per_image = 16
    config.vision_config.vision_use_head = False  # as Gemma 3's SigLIP (vLLM's tower has no pooling head)


def _sharpen(model, qk: float = 4.0, out: float = 6.0) -> None:
    """Sharper, larger attention in the text layers: a random model's near-uniform attention barely
    depends on positions, so keeping (VTW) or renumbering the text positions after withdrawal would
    give the same greedy tokens; scaled like this they do not (the tests check it)."""
    import torch

    from ..engine.families import adapter_for

    with torch.no_grad():
        for layer in adapter_for(model).text_model(model).layers:
            attn = layer.self_attn
            norms = [n for n in (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)) if n is not None]
            # q/k normalised per head (Qwen3, Gemma 3) undo a scaled projection: scale the norms' gains instead
            # (Gemma's norms multiply by 1 + weight)
            for norm in norms:
                if "Gemma" in type(norm).__name__:
                    norm.weight.copy_((1.0 + norm.weight) * qk - 1.0)
                else:
                    norm.weight.mul_(qk)
            scaled = [(attn.o_proj, out)] + ([] if norms else [(attn.q_proj, qk), (attn.k_proj, qk)])
            for proj, factor in scaled:
                proj.weight.mul_(factor)
                if proj.bias is not None and proj is not attn.o_proj:
                    proj.bias.mul_(factor)


BENCH_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
                  "{% if c['type'] == 'image' or c['type'] == 'image_url' %}<image>\n{% endif %}{% endfor %}"
                  "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
                  " {% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def save_bench_llava(path: str | Path, num_layers: int = 8, hidden: int = 1024, heads: int = 16,
                     intermediate: int | None = None, vocab_size: int = 32000, image_size: int = 336,
                     seed: int = 0) -> Path:
    """A LLaVA-1.5-shaped model with random weights for the serving load bench: a CLIP tower of 336-pixel
    images in 14-pixel patches (576 vision tokens per image, as LLaVA-1.5) but one narrow layer deep, a
    two-layer projector and a Llama text model of ``num_layers`` x ``hidden`` (multi-head attention, a
    32,000-token vocabulary). Saved with its processor, a word-level tokenizer over the whole vocabulary and
    a LLaVA-1.5 chat template (with ``<s>``), under the hub checkpoints' weight names."""
    import torch
    import transformers as tf
    from safetensors.torch import load_file, save_file

    from . import BOS_ID, EOS_ID, IMAGE_ID, PAD_ID

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vision = tf.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                 image_size=image_size, patch_size=14, projection_dim=64)
    text = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or 11 * hidden // 4,
                          num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=4096, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                          eos_token_id=EOS_ID, tie_word_embeddings=False)
    config = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_ID,
                            vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = tf.LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(path)
    tok = tokenizer("llava", vocab_size=vocab_size)
    image_processor = tf.CLIPImageProcessor(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    proc = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                             vision_feature_select_strategy="default", num_additional_image_tokens=1,
                             image_token=IMAGE_TOKEN, chat_template=BENCH_TEMPLATE)
    proc.save_pretrained(path)
    for file in path.glob("*.safetensors"):
        weights = load_file(file)
        save_file({hub_name(k): v.contiguous() for k, v in weights.items()}, file, metadata={"format": "pt"})
    return path


def save_tiny_llava(path: str | Path, num_layers: int = 6, seed: int = 0) -> Path:
    """The tiny LLaVA-1.5 (``save_tiny("llava", ...)``)."""
    return save_tiny("llava", path, num_layers=num_layers, seed=seed)


def hub_name(key: str) -> str:
    """A transformers-5 LLaVA / LLaVA-NeXT weight name under the hub checkpoints' layout."""
    key = re.sub(r"^model\.language_model\.", "language_model.model.", key)
    key = re.sub(r"^lm_head\.", "language_model.lm_head.", key)
    key = re.sub(r"^model\.multi_modal_projector\.", "multi_modal_projector.", key)
    key = re.sub(r"^model\.image_newline$", "image_newline", key)
    key = re.sub(r"^(model\.)?vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.", key)
    return key


def prompt(words: list[int], image: bool = True, pre: list[int] | None = None, family: str = "llava") -> str:
    """Prompt text: ``pre`` words, the family's image placeholder (video for ``VIDEO_ONLY``), then ``words``."""
    placeholder = {"internvl": INTERNVL_IMAGE, "gemma3": GEMMA_IMAGE, "mistral3": "[IMG]"}.get(
        family, QWEN_IMAGE if _qwen(family) else "<video>" if family in VIDEO_ONLY else IMAGE_TOKEN)
    parts = [f"w{i}" for i in (pre or [])] + ([placeholder] if image else []) + [f"w{i}" for i in words]
    return " ".join(parts)
