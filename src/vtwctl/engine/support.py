"""What the engine supports, checked before it runs: the model (family, compilation, attention, layer
types) and the inputs (pixel inputs, a prompt that does not end with a vision token)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ENDS_ON_VISION, VTWError
from . import compat
from .families import adapter_for

VISUAL_KWARGS = ("pixel_values", "pixel_values_images", "pixel_values_videos", "mm_encoder_outputs")


def carries_visual(kwargs: dict) -> bool:
    """Whether model inputs hold pixels (or encoder outputs), i.e. vision-token ids carry vision features."""
    return any(kwargs.get(name) is not None for name in VISUAL_KWARGS)


def check_prompt_end(vision: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """A VTWError if a row's last (non-padding) token is a vision token: VTW has nothing to predict from."""
    valid = torch.ones_like(vision) if valid is None else valid
    last = (valid.long() * torch.arange(1, valid.shape[1] + 1, device=valid.device)).argmax(1)
    rows = vision.gather(1, last[:, None])[:, 0] & valid.any(1)
    if bool(rows.any()):
        bad = ", ".join(str(i) for i in rows.nonzero()[:, 0].tolist())
        raise VTWError(f"the prompt of row {bad} {ENDS_ON_VISION}")


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers of the language model inside ``model``."""
    return len(adapter_for(model).text_model(model).layers)


def check_supported(model: nn.Module, k: int) -> None:
    """Refuse, with the reason, what withdrawal would compute wrongly; called at withdraw()'s entry."""
    from torch._dynamo.eval_frame import OptimizedModule

    compat.check_transformers()
    adapter = adapter_for(model)
    if adapter.refused:
        raise VTWError(adapter.refused)
    if isinstance(model, OptimizedModule):
        raise VTWError("withdraw() got a torch.compile'd model (OptimizedModule): compiled graphs do not see the "
                       "engine's hooks; pass the uncompiled model (see docs/engine.md, 'torch.compile')")
    compiled = compat.compiled_parts(model)
    if compiled:
        raise VTWError(f"withdraw(): {', '.join(compiled)} is compiled with torch.compile; its graph would not see "
                       "the engine's hooks. Pass the model before compiling it (see docs/engine.md, 'torch.compile')")
    wrappers = compat.compiled_wrappers(model)
    if wrappers:
        raise VTWError(f"withdraw(): {', '.join(wrappers)} exists in this process and its graphs are not guarded on "
                       "module hooks (dynamo's default): called inside the block it would run the stock model. Drop "
                       "the compiled wrapper, or set torch._dynamo.config.skip_nnmodule_hook_guards = False before "
                       "compiling (see docs/engine.md, 'torch.compile')")
    if adapter.blocks != "prefix" and not compat.is_causal_lm(model.config):
        raise VTWError(f"withdraw(): the {adapter.family} language model attends bidirectionally; "
                       "VTW needs a causal LM")
    layers = adapter.text_model(model).layers
    types = compat.layer_types(model.config, len(layers))
    impl = compat.attn_implementation(model)
    if impl not in compat.ATTENTION_IMPLEMENTATIONS:
        raise VTWError(f"withdraw(): attention implementation {impl!r} is not supported (flex attention's block "
                       f"masks are not built by the engine); load the model with one of "
                       f"{', '.join(compat.ATTENTION_IMPLEMENTATIONS)}")
    for i in range(k, len(layers)):
        if getattr(layers[i], "self_attn", None) is None or types[i] not in ("full_attention", "sliding_attention"):
            raise VTWError(f"withdraw(): decoder layer {i} of {adapter.family} is a {types[i]!r} layer; "
                           "withdrawal supports full and sliding-window attention layers only")
        if types[i] == "sliding_attention" and impl.startswith("flash_attention") and i >= max(k, 1):
            raise VTWError("withdraw(): flash attention counts its sliding window in cached slots, not in the "
                           "original positions that withdrawal keeps; use attn_implementation='sdpa' for this model")
