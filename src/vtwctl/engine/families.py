"""Family adapters: where the parts of a stock vision-language model live, and what differs.

Any stock transformers ``*ForConditionalGeneration`` whose config names its vision-token ids
(``image_token_id``/``image_token_index``, ``video_token_id``/...) and whose language model is a
decoder stack (``embed_tokens`` + ``layers``) gets a generic adapter: the multimodal model, the
language model, its layers and rotary embedding are found in the module tree. Explicit entries
exist only where a family really differs (M-RoPE, deepstack features, a prefix-LM mask, vision ids
in a vocabulary map) or is refused, with the reason. ``adapter_for`` picks the entry by
``config.model_type``, never by a checkpoint path.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any

VISION_ATTRS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")
MARKER_ATTRS = ("vision_start_token_id", "vision_end_token_id", "boi_token_index", "eoi_token_index",
                "boi_token_id", "eoi_token_id", "image_start_token_id", "image_end_token_id",
                "video_start_token_id", "video_end_token_id")
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Adapter:
    family: str  # transformers model_type
    model_class: str | None = None  # stock class; None: AutoModelForImageTextToText picks it
    vision_attrs: tuple[str, ...] = VISION_ATTRS  # config attributes holding vision token ids
    # token ids that frame a vision block but are text (count as system/instruction, not vision)
    marker_attrs: tuple[str, ...] = MARKER_ATTRS
    vocab_key: str | None = None  # vision id read from config.vocabulary_map[vocab_key] (VQ families)
    mrope: bool = False  # multimodal rotary positions (Qwen2-VL family, GLM-4V)
    deepstack: bool = False  # visual features added into the first text layers (Qwen3-VL)
    # token_type_ids mark blocks that attend bidirectionally: "prefix" (PaliGemma: the prompt, type 0)
    # or "image" (Gemma 3: each run of image tokens, type 1)
    blocks: str | None = None
    tested: bool = True  # covered by the test suite's tiny models
    refused: str | None = None  # why withdraw() refuses this family

    # -- structure -----------------------------------------------------------------------------
    def multimodal_model(self, model: Any) -> Any:
        """The module whose forward receives ``input_ids`` and the pixel inputs."""
        return _locate(model)[0]

    def text_model(self, model: Any) -> Any:
        """The decoder stack (has ``.embed_tokens``, ``.layers`` and ``.norm``)."""
        return _locate(model)[1]

    def vision_token_ids(self, config: Any) -> list[int]:
        ids = [getattr(config, a, None) for a in self.vision_attrs]
        if self.vocab_key is not None:
            ids.append((getattr(config, "vocabulary_map", None) or {}).get(self.vocab_key))
        return sorted({int(i) for i in ids if isinstance(i, int)})

    def marker_token_ids(self, config: Any) -> list[int]:
        ids = [getattr(config, a, None) for a in self.marker_attrs]
        return sorted({int(i) for i in ids if isinstance(i, int)} - set(self.vision_token_ids(config)))

    def attention_blocks(self, token_type_ids: Any, valid: Any) -> Any:
        """[B, q] block id of each token (-1: none) for the family's bidirectional blocks, or None."""
        import torch

        if self.blocks is None or token_type_ids is None:
            return None
        tt = token_type_ids.to(valid.device)
        if self.blocks == "prefix":
            return torch.where((tt == 0) & valid, 0, -1)
        image = tt == 1
        start = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
        return torch.where(image & valid, start.long().cumsum(1) - 1, -1)

    def takes_video(self, config: Any) -> bool:
        return any(getattr(config, a, None) is not None for a in ("video_token_id", "video_token_index"))


def _locate(model: Any) -> tuple[Any, Any]:
    """(multimodal model, language model) of ``model``, found once per model object."""
    found = _FOUND.get(model)
    if found is not None:
        return found
    from torch import nn

    from .compat import text_config

    n = getattr(text_config(model.config), "num_hidden_layers", None)
    stacks = [(name, m) for name, m in model.named_modules()
              if hasattr(m, "embed_tokens") and isinstance(getattr(m, "layers", None), nn.ModuleList)
              and len(m.layers) == n]
    if len(stacks) != 1:
        raise TypeError(f"{type(model).__name__}: cannot find its language model (a module with embed_tokens and "
                        f"{n} decoder layers); found {len(stacks)}")
    text_name, text = stacks[0]
    parts = text_name.split(".") if text_name else []
    modules = dict(model.named_modules())
    mm = None
    for depth in range(len(parts), -1, -1):  # the deepest module on the path that takes pixels
        cand = modules[".".join(parts[:depth])]
        if any(p.startswith("pixel_values") for p in inspect.signature(cand.forward).parameters):
            mm = cand
            break
    if mm is None:
        raise TypeError(f"{type(model).__name__}: no module above its language model takes pixel inputs")
    _FOUND[model] = (mm, text)
    return mm, text


_QWEN = dict(mrope=True)
_REFUSED_LLAMA4 = ("Llama 4 is not supported: its local layers use chunked attention, which withdrawal "
                   "does not implement (and its stock forward in transformers 5.2x fails)")

ADAPTERS: dict[str, Adapter] = {
    a.family: a
    for a in (
        Adapter("llava", "LlavaForConditionalGeneration"),
        Adapter("llava_next", "LlavaNextForConditionalGeneration"),
        Adapter("llava_next_video", "LlavaNextVideoForConditionalGeneration"),
        Adapter("video_llava", "VideoLlavaForConditionalGeneration"),
        Adapter("llava_onevision", "LlavaOnevisionForConditionalGeneration"),
        Adapter("vipllava", "VipLlavaForConditionalGeneration"),
        Adapter("qwen2_vl", "Qwen2VLForConditionalGeneration", **_QWEN),
        Adapter("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", **_QWEN),
        Adapter("qwen3_vl", "Qwen3VLForConditionalGeneration", deepstack=True, **_QWEN),
        Adapter("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", deepstack=True, **_QWEN),
        Adapter("glm4v", "Glm4vForConditionalGeneration", **_QWEN),
        Adapter("glm4v_moe", "Glm4vMoeForConditionalGeneration", **_QWEN),
        Adapter("gemma3", "Gemma3ForConditionalGeneration", blocks="image"),
        Adapter("paligemma", "PaliGemmaForConditionalGeneration", blocks="prefix"),
        Adapter("aya_vision", "AyaVisionForConditionalGeneration"),
        Adapter("cohere2_vision", "Cohere2VisionForConditionalGeneration"),
        Adapter("mistral3", "Mistral3ForConditionalGeneration"),
        Adapter("internvl", "InternVLForConditionalGeneration"),
        Adapter("got_ocr2", "GotOcr2ForConditionalGeneration"),
        Adapter("idefics2", "Idefics2ForConditionalGeneration"),
        Adapter("idefics3", "Idefics3ForConditionalGeneration"),
        Adapter("smolvlm", "SmolVLMForConditionalGeneration"),
        Adapter("janus", "JanusForConditionalGeneration"),
        Adapter("kimi_k25", "Kimi_K25ForConditionalGeneration"),
        Adapter("emu3", "Emu3ForConditionalGeneration", vocab_key="<image>"),
        Adapter("chameleon", "ChameleonForConditionalGeneration", vocab_key="<image>"),
        Adapter("llama4", "Llama4ForConditionalGeneration", refused=_REFUSED_LLAMA4),
    )
}


def adapter_for(model_or_config: Any) -> Adapter:
    """The adapter for a model (or config), by ``config.model_type``; generic when the config allows it."""
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family in ADAPTERS:
        return ADAPTERS[family]
    generic = Adapter(str(family), tested=False)
    if generic.vision_token_ids(config) and getattr(config, "text_config", None) is not None:
        return generic
    known = ", ".join(sorted(k for k, a in ADAPTERS.items() if a.refused is None))
    raise ValueError(f"unsupported model family {family!r}: its config names no image/video token id; "
                     f"tested families: {known}")


def known_families() -> list[dict]:
    """Every family with an explicit entry: its stock class, whether the test suite covers it, and
    why withdraw() refuses it (None if it does not). Other families whose config names vision-token
    ids get the generic adapter, untested."""
    return [{"family": a.family, "model_class": a.model_class, "tested": a.tested, "refused": a.refused,
             "mrope": a.mrope, "deepstack": a.deepstack, "blocks": a.blocks}
            for a in sorted(ADAPTERS.values(), key=lambda a: a.family)]


def vision_mask(input_ids: Any, vision_ids: list[int], attention_mask: Any = None, visual: bool = True) -> Any:
    """[B, S] True at vision tokens (the config's image/video ids) of a call that carries pixels.

    ``attention_mask`` (2D) excludes padding; ``visual=False`` (no pixel input) marks nothing, since
    vision-token ids carry vision features only when pixels come with them.
    """
    import torch

    if not visual or not vision_ids:
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
    else:
        mask = torch.isin(input_ids, torch.tensor(vision_ids, device=input_ids.device))
    if attention_mask is not None:
        mask = mask & attention_mask.bool()
    return mask
