"""VisionZip (Yang et al., CVPR 2025, "VisionZip: Longer is Better but Not Necessary in Vision Language
Models"): the language model sees, per image, a few *dominant* vision tokens chosen by the vision tower's
own attention and a few *contextual* tokens merged from the rest, instead of every patch feature.

As the authors' LLaVA code does it (dvlab-research/VisionZip, ``visionzip/clip_encoder.py``,
``visionzip/utils.py``, ``visionzip/main.py``), per image, at the tower layer whose output LLaVA feeds the
projector (``vision_feature_layer``; LLaVA-1.5: ``layers[-2]``):

1. dominant: the CLS token and the ``dominant - 1`` patches the CLS query attends to most at that layer
   (softmax attention of the CLS row, summed over heads), in sequence order;
2. contextual: the other tokens, in sequence order, are split into ``contextual`` targets (every
   ``max(1, rest // contextual)``-th one, from the first) and the tokens to merge; each token to merge goes
   to the target whose key (the layer's ``k_proj`` output averaged over heads, L2-normalised) is most
   similar (dot product); a contextual token is its target's hidden state plus the mean of the hidden
   states merged into it;
3. the features are the dominant tokens then the contextual tokens, ``dominant + contextual`` in all, of the
   layer's output hidden states; the model's own projector maps them, and the prompt holds as many image
   placeholders (``shrink``).

SigLIP towers have no CLS token: ours ranks patches by the attention each receives, averaged over every
query and head (the authors' released code covers CLIP only; docs/methods.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ...errors import ArgumentError, VTWError
from ..blocks import Blocks, on_thread
from ..registry import Setting

DEFAULTS = {"dominant": 54, "contextual": 10}  # the authors' LLaVA-1.5 setting: 64 tokens
SETTINGS = (
    Setting("dominant", 54, "dominant tokens per image, by the tower's attention (the CLS among them on CLIP)",
            "int", lo=1, grid=(54, 108, 162)),
    Setting("contextual", 10, "contextual tokens per image, merged from the rest", "int", lo=0),
)


def vision_tokens(vision: int, dominant: int = 54, contextual: int = 10) -> int:
    """The vision tokens the language model receives for an image of ``vision`` stock tokens (exact FLOPs)."""
    return VisionZip(dominant, contextual).vision_tokens(vision)

# LLaVA-1.5 settings by total tokens: (dominant, contextual). 64 is the authors' README; 128 and 192 as
# third-party ports (LightCompress) configure the paper's rows. The authors' ``visionzip()`` defaults to
# 191 + 30 (221 tokens), which is none of the paper's rows.
PRESETS = {64: (54, 10), 128: (108, 20), 192: (162, 30)}
TOWERS = {"clip_vision_model": True, "siglip_vision_model": False}  # tower model_type -> has a CLS token

_WHY = {  # families that are not a flat tower feeding one projector, and why VisionZip is not ported to them
    "llava_next": "LLaVA-NeXT tiles each image (AnyRes) and unpads the tiles' grid with image_newline tokens; the "
                  "authors' NeXT path restores kept tokens into each tile's grid, which is not ported",
    "llava_next_video": "LLaVA-NeXT-Video tiles images (AnyRes, unpadding, image_newline) and pools video frames; "
                        "not a flat tower",
    "llava_onevision": "LLaVA-OneVision tiles images (AnyRes, unpadding, image_newline) and pools video frames; "
                       "not a flat tower",
    "video_llava": "Video-LLaVA has separate image and video towers (LanguageBind); not ported",
    "vipllava": "ViP-LLaVA concatenates several tower layers (vision_feature_layers) under a norm before its "
                "projector: there is no single layer to rank by",
    "qwen2_vl": "Qwen2-VL's merger groups 2x2 patches after the tower and its M-RoPE positions follow the image "
                "grid, which a reduced token set does not have",
    "qwen2_5_vl": "Qwen2.5-VL's merger groups 2x2 patches after a windowed tower, and its M-RoPE positions follow "
                  "the image grid",
    "qwen3_vl": "Qwen3-VL's merger groups 2x2 patches and feeds deepstack features of several tower layers; its "
                "M-RoPE positions follow the image grid",
    "qwen3_vl_moe": "Qwen3-VL's merger groups 2x2 patches and feeds deepstack features of several tower layers; "
                    "its M-RoPE positions follow the image grid",
    "glm4v": "GLM-4V downsamples the tower's patches in its merger and its M-RoPE positions follow the image grid",
    "glm4v_moe": "GLM-4V downsamples the tower's patches in its merger and its M-RoPE positions follow the image "
                 "grid",
    "gemma3": "Gemma 3 average-pools the tower's tokens to mm_tokens_per_image before its projector and its image "
              "tokens attend to each other bidirectionally",
    "paligemma": "PaliGemma's image tokens belong to a bidirectional prefix whose length the processor fixes; not "
                 "ported",
}

_BLOCKS = Blocks()  # the threads inside an apply() block on each model (blocks do not nest within a thread)


def visionzip_tokens(hidden: torch.Tensor, score: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int,
                     cls: bool = True) -> torch.Tensor:
    """The VisionZip features of a batch of images, [N, dominant + contextual, D].

    ``hidden`` [N, T, D]: the tower layer's output (CLS first where ``cls``); ``score`` [N, T - cls]: how much
    attention each patch gets (the CLS row's, summed over heads; without a CLS, received from every query);
    ``keys`` [N, T, d]: the layer's keys averaged over heads. Dominant: the CLS (where ``cls``) and the
    ``dominant - cls`` best-scored patches, in sequence order; contextual: the rest merged into ``contextual``
    targets chosen by a stride, by key similarity (the authors' ``CLIPVisionTower_VisionZip.forward``).
    """
    n, t, d = hidden.shape
    first = int(cls)
    top = score.topk(dominant - first, dim=1).indices + first  # [N, dominant - first]
    keep = torch.zeros(n, t, dtype=torch.bool, device=hidden.device)
    keep[:, :first] = True
    keep.scatter_(1, top.to(hidden.device), True)
    dom = hidden[keep].view(n, dominant, d)  # boolean indexing keeps the sequence order
    if contextual == 0:
        return dom
    rest = t - dominant
    rest_h = hidden[~keep].view(n, rest, d)
    rest_k = keys.to(hidden.device)[~keep].view(n, rest, -1)
    rest_k = rest_k / rest_k.norm(dim=-1, keepdim=True)
    step = max(1, rest // contextual)
    target = torch.zeros(rest, dtype=torch.bool, device=hidden.device)
    target[torch.arange(0, rest, step, device=hidden.device)[:contextual]] = True
    sim = rest_k[:, ~target] @ rest_k[:, target].transpose(1, 2)  # [N, rest - contextual, contextual]
    assign = torch.zeros_like(sim, dtype=hidden.dtype).scatter_(2, sim.argmax(2, keepdim=True), 1)
    counts = assign.sum(1).clamp(min=1)[..., None]  # [N, contextual, 1]
    merged = assign.transpose(1, 2) @ rest_h[:, ~target] / counts
    return torch.cat([dom, rest_h[:, target] + merged], 1)


def tower_scores(attn: nn.Module, hidden: torch.Tensor, mask: Any, cls: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, keys) of a tower attention module's input ``hidden`` [N, T, C] (after its layer norm), from the
    module's own q/k projections, so any attention implementation runs: ``score`` [N, T - cls] (the CLS
    query's softmax attention to each patch summed over heads; without a CLS, the attention each token
    receives averaged over queries and heads), ``keys`` [N, T, d] (``k_proj`` output averaged over heads)."""
    n, t, _ = hidden.shape
    heads, dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(hidden).view(n, t, heads, dim).transpose(1, 2)  # [N, heads, T, d]
    k = attn.k_proj(hidden).view(n, t, heads, dim).transpose(1, 2)
    scale = getattr(attn, "scale", getattr(attn, "scaling", dim ** -0.5))
    rows = q[:, :, :1] if cls else q
    s = (rows.float() @ k.float().transpose(-1, -2)) * scale  # [N, heads, 1 or T, T]
    if isinstance(mask, torch.Tensor):
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    p = s.softmax(-1)
    score = p[:, :, 0, 1:].sum(1) if cls else p.mean((1, 2))
    return score, k.mean(1)


class VisionZip:
    """VisionZip before the language model: ``dominant`` tokens by the tower's attention (the CLS among them on
    CLIP) and ``contextual`` merged tokens per image (the authors' LLaVA-1.5 default: 54 + 10)."""

    name = "visionzip"

    def __init__(self, dominant: int = DEFAULTS["dominant"], contextual: int = DEFAULTS["contextual"]):
        for what, v, lo in (("dominant", dominant, 1), ("contextual", contextual, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ArgumentError(f"VisionZip {what} must be an integer >= {lo}, got {v!r}")
        self.dominant, self.contextual = dominant, contextual

    @property
    def tokens(self) -> int:
        """Vision tokens per image the language model sees."""
        return self.dominant + self.contextual

    def vision_tokens(self, vision: int) -> int:
        """How many vision tokens the language model sees per image whose stock count is ``vision``:
        ``dominant + contextual`` (a CLIP tower has ``vision + 1`` tokens under LLaVA's "default" strategy, the
        CLS being one of the dominant tokens, so at most ``vision + 1``)."""
        if self.tokens > vision + 1:
            raise ArgumentError(f"VisionZip dominant + contextual = {self.tokens} is more than the {vision} vision "
                                "tokens (+ CLS) of an image")
        return self.tokens

    def __repr__(self) -> str:
        return f"VisionZip(dominant={self.dominant}, contextual={self.contextual})"

    # -- what the model must be ----------------------------------------------------------------------
    def refusal(self, model: nn.Module) -> str | None:
        """Why ``model`` cannot take VisionZip, in one line (None: it can)."""
        config = model.config
        family = getattr(config, "model_type", None)
        if family != "llava":
            why = _WHY.get(family, "VisionZip is ported to LLaVA's flat tower (LlavaForConditionalGeneration) only")
            return f"{family}: {why}"
        vc = config.vision_config
        tower = getattr(vc, "model_type", None)
        if tower not in TOWERS:
            return (f"llava with a {tower} tower: VisionZip ranks by a CLIP tower's CLS attention (or, ours, a SigLIP "
                    "tower's received attention); other towers are not ported")
        layer, strategy = config.vision_feature_layer, config.vision_feature_select_strategy
        n = vc.num_hidden_layers
        if isinstance(layer, bool) or not isinstance(layer, int):
            return f"llava: vision_feature_layer {layer!r} concatenates several tower layers; VisionZip ranks one"
        if not (-n <= layer <= -1 or 1 <= layer <= n):
            return (f"llava: vision_feature_layer {layer} is not the output of one of the tower's {n} layers "
                    "(0: the embeddings, which have no attention)")
        if strategy not in ("default", "full"):
            return f"llava: unknown vision_feature_select_strategy {strategy!r}"
        cls = TOWERS[tower]
        if strategy == "default" and not cls:
            return "llava with a SigLIP tower under the 'default' strategy, which drops a first token SigLIP lacks"
        total = (vc.image_size // vc.patch_size) ** 2 + int(cls)
        if self.tokens > total:
            return (f"VisionZip dominant + contextual = {self.dominant} + {self.contextual} = {self.tokens} is more "
                    f"than the {total} tokens of the tower ({'CLS and ' if cls else ''}"
                    f"{total - int(cls)} patches); lower the counts")
        return None

    def _check(self, model: nn.Module) -> None:
        why = self.refusal(model)
        if why is not None:
            raise VTWError(f"VisionZip: {why}")

    # -- the prompt ------------------------------------------------------------------------------------
    def shrink(self, model: nn.Module, inputs: dict, padding_side: str | None = None) -> dict:
        """``inputs`` (a processed batch) with each image's placeholder tokens cut to ``dominant + contextual``:
        the extra image-token ids leave ``input_ids`` and every other per-token tensor (``attention_mask``,
        ``labels``, token types), and the rows are padded again to one length on their padding side
        (``padding_side``, else the side ``attention_mask`` pads, else left). Pixel inputs are untouched."""
        self._check(model)
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return dict(inputs)
        if "position_ids" in inputs:
            raise ArgumentError("VisionZip.shrink: leave position_ids out; the model derives the reduced sequence's "
                                "contiguous positions itself")
        config = model.config
        image_id = getattr(config, "image_token_id", None)
        image_id = getattr(config, "image_token_index", None) if image_id is None else image_id
        ids = inputs["input_ids"]
        b, s = ids.shape
        valid = inputs.get("attention_mask")
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
        vc = config.vision_config
        h, w = pixels.shape[-2:]
        cls = TOWERS[vc.model_type]
        total = (h // vc.patch_size) * (w // vc.patch_size) + int(cls)  # the tower's tokens
        per_image = total - int(config.vision_feature_select_strategy == "default")  # the stock prompt's
        if self.tokens > total:
            raise ArgumentError(f"VisionZip dominant + contextual = {self.tokens} is more than the {total} tokens "
                                f"of the tower for {h}x{w} images")
        image = (ids == image_id) & valid
        found = int(image.sum())
        if found != pixels.shape[0] * per_image:
            raise ArgumentError(f"VisionZip.shrink: {found} image tokens for {pixels.shape[0]} images of "
                                f"{per_image} tokens each; expected the processor's stock prompt")
        rank = image.long().cumsum(1) - 1  # index among the row's image tokens
        kept = valid & ~(image & (rank % per_image >= self.tokens))  # the first `tokens` of each image stay
        side = padding_side or _padding_side(valid)
        width = int(kept.sum(1).max())
        pad_id = _pad_id(model, ids, valid)
        out = dict(inputs)
        for name, value in inputs.items():
            if not isinstance(value, torch.Tensor) or value.ndim < 2 or tuple(value.shape[:2]) != (b, s) \
                    or name.startswith("pixel_values") or name == "image_sizes":
                continue
            fill = pad_id if name == "input_ids" else -100 if name == "labels" else 0
            out[name] = _repack(value, kept, width, side, fill)
        if "attention_mask" not in inputs and bool((kept.sum(1) < width).any()):
            out["attention_mask"] = _repack(torch.ones_like(ids), kept, width, side, 0)
        return out

    # -- the features ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def apply(self, model: nn.Module) -> Iterator[VisionZip]:
        """Inside the block the model's image features are the VisionZip tokens (of calls this thread makes;
        the prompt must carry as many image tokens: ``shrink``). Hooks on the tower's selected layer (its
        attention scores and keys from the module's own projections, any attention implementation) and on the
        projector's input; all removed on exit, also on error."""
        from ..compat import hook_guards
        from ..families import adapter_for

        self._check(model)
        config = model.config
        mm = adapter_for(model).multimodal_model(model)
        tower, projector = mm.vision_tower, mm.multi_modal_projector
        layers = getattr(tower, "vision_model", tower).encoder.layers  # transformers < 5.x nest a vision_model
        v = config.vision_feature_layer
        layer = layers[v - 1 if v > 0 else len(layers) + 1 + v - 1]  # hidden_states[v] is that layer's output
        cls = TOWERS[config.vision_config.model_type]
        state: dict[str, Any] = {}

        def on_attention(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            state["score"], state["keys"] = tower_scores(module, hidden, kwargs.get("attention_mask"), cls)

        def on_layer(module, args, output):
            state["hidden"] = output[0] if isinstance(output, tuple) else output

        def on_projector(module, args, kwargs):
            feats = args[0] if args else kwargs["image_features"]
            hidden = state.pop("hidden", None)
            score, keys = state.pop("score", None), state.pop("keys", None)
            chosen = hidden if hidden is None or feats.shape[1] == hidden.shape[1] else hidden[:, 1:]
            if chosen is None or score is None or chosen.shape != feats.shape or not torch.equal(chosen, feats):
                raise RuntimeError("VisionZip: the projector's input is not the output of the tower layer "
                                   f"vision_feature_layer={v} names (a vision_feature_layer or strategy passed to "
                                   "the call?)")
            out = visionzip_tokens(hidden, score, keys, self.dominant, self.contextual, cls).to(feats.dtype)
            return ((out, *args[1:]), kwargs) if args else (args, {**kwargs, "image_features": out})

        nested = "VisionZip.apply is already active on this model in this thread; blocks do not nest"
        with _BLOCKS.enter(model, nested) as thread:
            handles = []
            try:
                with hook_guards():  # the hooks act on this thread's calls only: another thread's run stock
                    handles.append(layer.self_attn.register_forward_pre_hook(on_thread(on_attention, thread),
                                                                             with_kwargs=True))
                    handles.append(layer.register_forward_hook(on_thread(on_layer, thread)))
                    handles.append(projector.register_forward_pre_hook(on_thread(on_projector, thread),
                                                                       with_kwargs=True))
                    yield self
            finally:
                for handle in handles:
                    handle.remove()
                state.clear()


@contextlib.contextmanager
def visionzip_vtw(model: nn.Module, k: int, reducer: VisionZip | None = None,
                  positions: str = "keep") -> Iterator[VisionZip]:
    """VisionZip composed with VTW: the reducer's tokens in layers < ``k``, no vision token after. Feed it the
    reduced prompt: ``with visionzip_vtw(model, k, vz): model.generate(**vz.shrink(model, inputs))``."""
    from ..hooks import withdraw

    reducer = reducer or VisionZip()
    with reducer.apply(model), withdraw(model, k, positions):
        yield reducer


def _padding_side(valid: torch.Tensor) -> str:
    left, right = bool((~valid[:, 0]).any()), bool((~valid[:, -1]).any())
    if left and right:
        raise ArgumentError("VisionZip.shrink: the batch pads on both sides; pass padding_side")
    return "right" if right else "left"


def _pad_id(model: nn.Module, ids: torch.Tensor, valid: torch.Tensor) -> int:
    if bool((~valid).any()):
        return int(ids[~valid][0])
    for source in (getattr(model, "generation_config", None), model.config, model.config.get_text_config()):
        pad = getattr(source, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
    return 0


def _repack(value: torch.Tensor, kept: torch.Tensor, width: int, side: str, fill: int) -> torch.Tensor:
    """``value`` [B, S, ...] with the ``kept`` entries of each row packed to ``width`` on the far side of
    ``side`` (padding with ``fill`` on ``side``)."""
    out = value.new_full((value.shape[0], width, *value.shape[2:]), fill)
    for row in range(value.shape[0]):
        part = value[row][kept[row].to(value.device)]
        if side == "left":
            out[row, width - part.shape[0]:] = part
        else:
            out[row, : part.shape[0]] = part
    return out
