"""Tiny random vision-language models of every covered family, built from configs.

Used by the tests and the benchmarks (no downloads): ``tiny_model(family)`` returns a stock
transformers model with random weights, and ``tiny_inputs(model, ...)`` a batch of model inputs
whose ``input_ids`` hold exactly as many vision tokens as the model's vision tower produces.
The per-family configs and pixel layouts are in ``vtwctl.testing.zoo``; ``save_tiny_llava`` writes
a tiny LLaVA with its processor to disk, and ``vtwctl.testing.checkpoints`` the tiny checkpoints of
every family the vLLM plugin serves (with head_dim 32, as vLLM's CPU attention needs).
"""

from __future__ import annotations

from typing import Any

from .zoo import (
    BOS_ID,
    EOS_ID,
    IMAGE_ID,
    PAD_ID,
    TINY,
    VEND_ID,
    VIDEO_ID,
    VOCAB,
    VSTART_ID,
    image_pixels,
    video_pixels,
)

__all__ = ["BOS_ID", "EOS_ID", "IMAGE_ID", "PAD_ID", "VEND_ID", "VIDEO_ID", "VOCAB", "VSTART_ID", "FAMILIES",
           "WITHDRAWABLE", "VIDEO_FAMILIES", "tiny_config", "tiny_model", "tiny_inputs", "count_vision_tokens",
           "tiny_tokenizer", "save_tiny_llava"]

FAMILIES = tuple(TINY)  # every family with a tiny model
WITHDRAWABLE = tuple(f for f in FAMILIES if f != "llama4")  # the ones withdraw() accepts
VIDEO_FAMILIES = tuple(f for f in FAMILIES if TINY[f].video)


def tiny_config(family: str, num_layers: int = 6, hidden: int = 64, **text_kw: Any):
    """A small config of ``family`` (a transformers ``model_type``).

    ``sliding_window`` (Gemma 3, Cohere 2, Mistral 3, Idefics 2) sets the text model's window.
    """
    if family not in TINY:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    return TINY[family].config(family, layers=num_layers, hidden=hidden, **text_kw)


def tiny_model(family: str, attn_implementation: str = "sdpa", seed: int = 0, **kw: Any):
    """A randomly initialised stock model of ``family`` in fp32, eval mode."""
    import torch
    import transformers as tf

    from ..engine.families import adapter_for

    config = tiny_config(family, **kw)
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    cls = getattr(tf, adapter_for(config).model_class)
    model = cls(config).eval()
    # Random init gives tiny logits; sharpen the text embeddings a little so greedy decoding is not a tie.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None
    return model


def count_vision_tokens(model, pixels: dict, video: bool = False) -> int:
    """How many sequence positions the vision tower's output for ``pixels`` occupies."""
    import inspect

    import torch

    from ..engine.families import adapter_for

    mm = adapter_for(model).multimodal_model(model)
    fn = mm.get_video_features if video else mm.get_image_features
    params = list(inspect.signature(fn).parameters)
    kw = {}
    for key, val in pixels.items():
        if ("video" in key) == video:  # the pixel argument's name differs across releases
            kw[params[0] if key.startswith("pixel_values") and key not in params else key] = val
    with torch.no_grad():
        out = fn(**kw)
    if not isinstance(out, (torch.Tensor, list, tuple)):
        pooled = getattr(out, "pooler_output", None)
        out = pooled if pooled is not None else out.last_hidden_state
    if isinstance(out, (list, tuple)):
        return sum(int(o.reshape(-1, o.shape[-1]).shape[0]) for o in out)
    return int(out.reshape(-1, out.shape[-1]).shape[0])


def tiny_inputs(model, rows: list[dict] | None = None, padding: str = "left", seed: int = 0) -> dict:
    """A padded batch for ``model`` built from row specs.

    Each row is a dict with ``pre`` (system tokens before the vision block), ``post`` (instruction
    tokens after it), ``image`` (None, True, or an image size (h, w): pixels for AnyRes/Pixtral,
    merge-grid patches for Qwen/GLM/Kimi) and ``video`` (bool). Returns the model inputs, with
    ``attention_mask`` marking padding and the family's token types. Vision tokens are exactly as
    many as the tower produces.
    """
    import inspect

    import torch

    family = model.config.model_type
    spec = TINY[family]
    rows = rows or [{"pre": 5, "post": 7, "image": True}]
    gen = torch.Generator().manual_seed(seed)
    seqs, images, videos = [], [], []
    for row in rows:
        toks = [BOS_ID] + torch.randint(3, 200, (row.get("pre", 4),), generator=gen).tolist()
        for kind in ("image", "video"):
            want = row.get(kind)
            if not want:
                continue
            if kind == "image":
                px = image_pixels(family, want if isinstance(want, tuple) else None, gen)
                images.append(px)
                n, tok = count_vision_tokens(model, px), IMAGE_ID
            else:
                px = video_pixels(family, gen)
                videos.append(px)
                n, tok = count_vision_tokens(model, px, video=True), VIDEO_ID
            block = [tok] * n
            toks += [VSTART_ID] + block + [VEND_ID] if spec.markers else block
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
            if parts[0].ndim == 4:  # images of different sizes: zero-padded to the largest, as processors do
                h, w = max(p.shape[-2] for p in parts), max(p.shape[-1] for p in parts)
                parts = [torch.nn.functional.pad(p, (0, w - p.shape[-1], 0, h - p.shape[-2])) for p in parts]
            out[key] = torch.cat(parts, 0)
    types = token_types(family, ids)
    if types is not None and types[0] in inspect.signature(model.forward).parameters:  # older releases lack some
        out[types[0]] = types[1]
    return out


def token_types(family: str, ids) -> tuple[str, Any] | None:
    """The per-token type input ``family``'s processor returns for prompt ``ids`` (name, tensor), or None."""
    kind = TINY[family].token_types
    if kind == "mm":
        return "mm_token_type_ids", ((ids == IMAGE_ID).int() + 2 * (ids == VIDEO_ID).int())
    if kind == "image":
        return "token_type_ids", (ids == IMAGE_ID).long()
    if kind == "prefix":  # PaliGemma: the whole prompt is the bidirectional prefix
        return "token_type_ids", ids.new_zeros(ids.shape)
    return None


def generated_token_type(family: str) -> int:
    """The token type of generated tokens (PaliGemma's suffix is 1; text is 0 elsewhere)."""
    return 1 if TINY[family].token_types == "prefix" else 0


_WORDS = ("user assistant what is the colour shape of a an in on image picture there red green blue yellow "
          "circle square triangle yes no one two three how many left right top bottom answer question "
          "with option letter from given choices directly using single word or phrase context").split()


def tiny_tokenizer(extra: dict[str, int] | None = None):
    """A word-level fast tokenizer over a small vocabulary whose ids fit the tiny models."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, "<unk>": 3}
    for w in list(_WORDS) + [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,:?!()"]:
        vocab.setdefault(w, len(vocab))
    vocab["<image>"], vocab["<video>"] = IMAGE_ID, VIDEO_ID
    vocab["<vstart>"], vocab["<vend>"] = VSTART_ID, VEND_ID
    vocab.update(extra or {})
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
