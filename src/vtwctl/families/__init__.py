"""Family adapters: what differs between supported vision-language model families.

An adapter is chosen by ``config.model_type`` (never by a checkpoint path). It tells where the
multimodal wrapper, the language model and its decoder layers live, which token ids carry vision
features, which model class loads the family, and how to split a prompt into the paper's token
types (system / vision / instruction / output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Adapter:
    family: str  # transformers model_type
    model_class: str  # stock transformers class name
    vision_attrs: tuple[str, ...] = ("image_token_id",)  # config attributes holding vision token ids
    # token ids that frame a vision block but are text (count as system/instruction, not vision)
    marker_attrs: tuple[str, ...] = ()
    takes_video: bool = False
    mrope: bool = False  # multimodal rotary positions (Qwen2-VL family)

    # -- structure -----------------------------------------------------------------------------
    def multimodal_model(self, model: Any) -> Any:
        """The module whose forward receives ``input_ids`` and the pixel inputs."""
        if hasattr(model, "language_model") and hasattr(model.language_model, "layers"):
            return model
        inner = getattr(model, "model", None)
        if inner is not None and hasattr(inner, "language_model"):
            return inner
        raise TypeError(f"{type(model).__name__} does not look like a {self.family} model")

    def text_model(self, model: Any) -> Any:
        """The decoder stack (has ``.layers``, ``.norm`` and ``.rotary_emb``)."""
        return self.multimodal_model(model).language_model

    def vision_token_ids(self, config: Any) -> list[int]:
        ids = [getattr(config, a, None) for a in self.vision_attrs]
        return [int(i) for i in ids if i is not None]

    def marker_token_ids(self, config: Any) -> list[int]:
        ids = [getattr(config, a, None) for a in self.marker_attrs]
        return [int(i) for i in ids if i is not None]


_QWEN = dict(vision_attrs=("image_token_id", "video_token_id"),
             marker_attrs=("vision_start_token_id", "vision_end_token_id"), takes_video=True, mrope=True)

ADAPTERS: dict[str, Adapter] = {
    a.family: a
    for a in (
        Adapter("llava", "LlavaForConditionalGeneration"),
        Adapter("llava_next", "LlavaNextForConditionalGeneration"),
        Adapter("video_llava", "VideoLlavaForConditionalGeneration",
                vision_attrs=("image_token_id", "video_token_id"), takes_video=True),
        Adapter("llava_onevision", "LlavaOnevisionForConditionalGeneration",
                vision_attrs=("image_token_id", "video_token_id"), takes_video=True),
        Adapter("qwen2_vl", "Qwen2VLForConditionalGeneration", **_QWEN),
        Adapter("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", **_QWEN),
    )
}


def adapter_for(model_or_config: Any) -> Adapter:
    """The adapter for a model (or config), by ``config.model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family not in ADAPTERS:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unsupported model family {family!r}; supported: {known}")
    return ADAPTERS[family]
