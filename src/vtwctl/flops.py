"""FLOP counts for VTW, FastV and the stock model: the paper's formula, an exact analytic count, operator counters.

Three ways to count, from coarse to measured (see docs/flops.md):

* :func:`paper_flops` - the paper's Eq. 1 per decoder layer, ``2 s^2 h + 12 s h^2``, summed over layers with the
  sequence length each layer sees. Eq. 1 counts multiply-adds; the function returns FLOPs (x2), the unit of
  the paper's Table 2. ``count="vision"`` gives the vision tokens' share as in Table 3.
* :func:`exact_flops` - an architecture-aware analytic count (grouped-query K/V projections, the real (gated)
  MLP width, the attention matmuls, lm_head over the positions actually computed, KV-cached decode steps,
  the vision tower and projector). It counts what ``torch.utils.flop_counter`` counts: matrix products only,
  2 FLOPs per multiply-add, attention as full ``Lq x Lk`` products (no causal halving).
* :func:`counted_flops` - operator counts of a real forward pass with ``torch.utils.flop_counter`` or fvcore.
* :func:`calflops_flops` - the count the paper's authors printed (they measured with calflops): calflops'
  rules written out analytically (2 FLOPs per multiply-add of every ``F.linear``, one per element of
  activations and softmax, ``torch.matmul`` only where eager attention calls it; scaled-dot-product
  attention, norms, rotary and residual arithmetic count nothing), over the language model, with lm_head on
  every position the last layer computes. Tested against the calflops package itself.

All results are FLOPs with one multiply-add = 2 FLOPs. Pure functions, no printing; torch, transformers and
fvcore are imported lazily.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

FastV = tuple[int, float]
FASTV_DEFAULT: FastV = (2, 0.5)  # FastV K=2 (layers 0..1 full), R=50% of the vision tokens dropped


# -- dimensions ----------------------------------------------------------------------------------------------
@dataclass
class Dims:
    """The dimensions a FLOP count needs: the decoder LM and (optionally) the vision tower and projector.

    Vision fields: ``vision_tokens_in`` is the number of tokens one tower pass processes (CLIP: patches + CLS;
    SigLIP: patches), ``vision_tokens_out`` how many of them reach the projector per pass; Qwen towers take
    native resolutions, so there both are per merged output token: ``merge^2`` and 1. ``vision_patch_dim`` is
    the patch-embedding input size (channels x patch^2 [x temporal patch]).
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True
    vision_layers: int | None = None
    vision_hidden: int | None = None
    vision_intermediate: int | None = None
    vision_tokens_in: int | None = None
    vision_tokens_out: int | None = None
    vision_patch_dim: int | None = None
    vision_gated_mlp: bool = False
    vision_cls: bool = False
    projector_in: int | None = None
    projector_hidden: int | None = None
    projector_out: int | None = None
    projector_layers: int = 2

    @property
    def has_vision(self) -> bool:
        return bool(self.vision_layers and self.vision_hidden and self.vision_intermediate)

    @classmethod
    def from_profile(cls, profile: dict) -> Dims:
        """From a vtwctl profile dict (``profiles/*.json``: keys ``text.*`` and ``vision.*``)."""
        t = profile["text"]
        heads = int(t["num_heads"])
        hidden = int(t["hidden_size"])
        dims = cls(
            num_layers=int(t["num_layers"]), hidden_size=hidden, num_heads=heads,
            num_kv_heads=int(t.get("num_kv_heads") or heads), head_dim=int(t.get("head_dim") or hidden // heads),
            intermediate_size=int(t["intermediate_size"]), vocab_size=int(t["vocab_size"]),
            gated_mlp=t.get("hidden_act", "silu") in ("silu", "swish", "swiglu"),
        )
        v = profile.get("vision") or {}
        if not v.get("hidden_size"):
            return dims
        vh, patch = int(v["hidden_size"]), int(v.get("patch_size") or 14)
        encoder = (v.get("encoder") or "").lower()
        dims.vision_layers, dims.vision_hidden = int(v["num_layers"]), vh
        dims.vision_intermediate = int(v["intermediate_size"])
        if "qwen" in encoder or "merger" in (v.get("projector") or ""):
            merge = 2
            dims.vision_gated_mlp = "swiglu" in encoder
            dims.vision_tokens_in, dims.vision_tokens_out = merge * merge, 1  # per merged token, as from_config
            dims.vision_patch_dim = 3 * 2 * patch * patch
            dims.projector_in = dims.projector_hidden = vh * merge * merge
        else:
            grid = (int(v["image_size"]) // patch) ** 2
            cls_token = "clip" in encoder or "languagebind" in encoder
            dims.vision_tokens_in = grid + (1 if cls_token else 0)
            dims.vision_tokens_out = grid
            dims.vision_cls = cls_token
            dims.vision_patch_dim = 3 * patch * patch
            dims.projector_in, dims.projector_hidden = vh, hidden
        dims.projector_out = hidden
        return dims

    @classmethod
    def from_config(cls, config: Any) -> Dims:
        """From a transformers config of LLaVA / LLaVA-NeXT / Video-LLaVA / LLaVA-OneVision / Qwen2(.5)-VL.

        Plain decoder-only LM configs (no ``vision_config``) are accepted too.
        """
        t = getattr(config, "text_config", None) or config
        heads = int(t.num_attention_heads)
        hidden = int(t.hidden_size)
        head_dim = getattr(t, "head_dim", None) or hidden // heads
        dims = cls(
            num_layers=int(t.num_hidden_layers), hidden_size=hidden, num_heads=heads,
            num_kv_heads=int(getattr(t, "num_key_value_heads", None) or heads), head_dim=int(head_dim),
            intermediate_size=int(t.intermediate_size), vocab_size=int(t.vocab_size),
            gated_mlp=True,  # Llama / Mistral / Qwen2 decoders: gate, up, down projections
        )
        v = getattr(config, "vision_config", None)
        if v is None:
            return dims
        if getattr(v, "depth", None) is not None:  # Qwen2-VL / Qwen2.5-VL vision transformer
            merge = int(getattr(v, "spatial_merge_size", 2))
            patch = int(v.patch_size)
            qwen25 = getattr(v, "out_hidden_size", None) is not None
            embed = int(v.hidden_size if qwen25 else v.embed_dim)
            dims.vision_layers, dims.vision_hidden = int(v.depth), embed
            dims.vision_intermediate = int(v.intermediate_size if qwen25 else embed * v.mlp_ratio)
            dims.vision_gated_mlp = qwen25
            dims.vision_patch_dim = int(getattr(v, "in_channels", 3)) * int(v.temporal_patch_size) * patch * patch
            dims.vision_tokens_in, dims.vision_tokens_out = merge * merge, 1  # per merged token; scaled by passes
            dims.projector_in = dims.projector_hidden = embed * merge * merge
            dims.projector_out = int(v.out_hidden_size if qwen25 else v.hidden_size)
            return dims
        vh, patch = int(v.hidden_size), int(v.patch_size)
        grid = (int(v.image_size) // patch) ** 2
        cls_token = getattr(v, "model_type", "") == "clip_vision_model"
        dims.vision_layers, dims.vision_hidden = int(v.num_hidden_layers), vh
        dims.vision_intermediate = int(v.intermediate_size)
        dims.vision_tokens_in = grid + (1 if cls_token else 0)
        dims.vision_cls = cls_token
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        dims.vision_tokens_out = grid + (1 if cls_token and strategy == "full" else 0)
        dims.vision_patch_dim = int(getattr(v, "num_channels", 3)) * patch * patch
        layers = getattr(config, "vision_feature_layer", -1)
        n_feat = 1 if isinstance(layers, int) else len(layers)
        dims.projector_in, dims.projector_hidden, dims.projector_out = vh * n_feat, hidden, hidden
        return dims


def dims_for(spec: str) -> Dims:
    """Dims of a vtwctl profile (short name, hub id or alias), else of a local model directory's config."""
    from . import profiles

    prof = profiles.find(spec)
    if prof is not None:
        return Dims.from_profile(prof)
    from transformers import AutoConfig

    return Dims.from_config(AutoConfig.from_pretrained(spec, local_files_only=True))


def _fastv(fastv: Any) -> FastV | None:
    if fastv is None or fastv is False:
        return None
    if fastv is True:
        return FASTV_DEFAULT
    if isinstance(fastv, dict):
        return int(fastv.get("k", FASTV_DEFAULT[0])), float(fastv.get("ratio", FASTV_DEFAULT[1]))
    k, ratio = fastv
    return int(k), float(ratio)


def _kept(vision: float, text: float, fastv: Any, dart: Any) -> tuple[int, float] | None:
    """(K, vision tokens kept from layer K) of FastV or DART (``dart``: (K, ratio, (vision, text pivots)),
    ``RunSpec.dart``; its count is ``policies.dart.kept_count``); None for neither."""
    fv = _fastv(fastv)
    if fv is not None and dart is not None:
        raise ValueError("give fastv or dart, not both")
    if dart is not None:
        from .engine.policies.dart import kept_count

        return int(dart[0]), float(kept_count(int(vision), int(text), float(dart[1]), tuple(dart[2])))
    if fv is None:
        return None
    from .engine.policies.fastv import dropped_count

    return fv[0], float(vision - dropped_count(vision, fv[1]))  # what the policy keeps


def layer_tokens(num_layers: int, vision: int, text: int, k: int | None = None,
                 fastv: Any = None, dart: Any = None, per_layer: Any = None) -> list[tuple[int, int]]:
    """(vision, text) tokens each decoder layer processes in prefill.

    VTW (``k``): layers ``0..k-1`` see all tokens, layers ``k..N-1`` text only. FastV (``fastv=(K, R)``, or
    True for (2, 0.5)): layers ``0..K-1`` see all tokens, later layers ``round(vision * (1 - R))`` vision tokens.
    DART (``dart=(K, R, (P_v, P_t))``): later layers the vision pivots and what the pivots keep
    (``policies.dart.kept_count``; the text pivots are counted among ``text``, as if all of it followed the image).
    ``per_layer``: any method's vision tokens per layer (``engine.registry.Method.vision_by_layer``).
    """
    given = sum(x is not None and x is not False for x in (fastv, dart, per_layer))
    if given > 1:
        raise ValueError("give one of fastv, dart and per_layer")
    if k is not None and given:
        raise ValueError("give k (VTW) or fastv/dart/per_layer, not both")
    if k is not None and not 0 <= k <= num_layers:
        raise ValueError(f"k must be in 0..{num_layers}, got {k}")
    if per_layer is not None:
        if len(per_layer) != num_layers:
            raise ValueError(f"per_layer has {len(per_layer)} entries for {num_layers} layers")
        return [(int(v), text) for v in per_layer]
    fv = _kept(vision, text, fastv, dart)
    out = []
    for i in range(num_layers):
        if k is not None and i >= k:
            out.append((0, text))
        elif fv is not None and i >= fv[0]:
            out.append((int(fv[1]), text))
        else:
            out.append((vision, text))
    return out


# -- 1. the paper's Eq. 1 ------------------------------------------------------------------------------------
def paper_flops(dims: Dims, vision: float, text: float, k: int | None = None, fastv: Any = None,
                count: str = "all", dart: Any = None, per_layer: Any = None) -> float:
    """The paper's count in FLOPs: ``2 x sum_layers (2 s^2 h + 12 s h^2)`` (Eq. 1 gives multiply-adds).

    ``s`` is ``vision + text`` in layers that see the vision tokens and ``text`` (+ FastV's kept vision tokens)
    after. ``count="vision"``: the vision tokens' share only, ``2 x 12 h^2`` per vision token per layer (the
    linear part of Eq. 1; the ``s^2`` term couples vision and text and is not attributed), as in Table 3.
    """
    h = dims.hidden_size
    if count not in ("all", "vision"):
        raise ValueError(f"count must be 'all' or 'vision', got {count!r}")
    total = 0.0
    for v, t in layer_tokens(dims.num_layers, vision, text, k, fastv, dart, per_layer):
        if count == "vision":
            total += 12.0 * v * h * h
        else:
            s = v + t
            total += 2.0 * s * s * h + 12.0 * s * h * h
    return 2.0 * total


# -- 2. exact analytic count ---------------------------------------------------------------------------------
@dataclass
class FlopReport:
    """FLOPs (2 per multiply-add) of one sequence.

    ``prefill``: decoder layers over the prompt (no lm_head); ``lm_head``: the prefill forward's lm_head over
    ``logits_to_keep`` positions; ``decode_total``: all decode steps (decoder layers + their lm_head), and
    ``decode_per_token`` their average (or the first step's cost when ``decode_tokens == 0``);
    ``vision_tower``/``projector``: the vision encoder and projector; ``total``: the sum of the above.
    ``by_layer``: prefill FLOPs of each decoder layer.
    """

    prefill: float = 0.0
    lm_head: float = 0.0
    decode_per_token: float = 0.0
    decode_total: float = 0.0
    vision_tower: float = 0.0
    projector: float = 0.0
    total: float = 0.0
    by_layer: list[float] = field(default_factory=list)

    @property
    def language(self) -> float:
        """The language model's prefill forward: decoder layers + lm_head."""
        return self.prefill + self.lm_head

    def to_dict(self) -> dict:
        d = asdict(self)
        d["language"] = self.language
        return d


def _layer_flops(d: Dims, q: int, kv: int) -> float:
    """One decoder layer: ``q`` query tokens attending over ``kv`` keys (2 FLOPs per multiply-add)."""
    h, hq, hkv = d.hidden_size, d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    proj = 2 * q * h * hq + 2 * 2 * q * h * hkv + 2 * q * hq * h  # q, k+v (grouped-query), o
    attn = 2 * 2 * d.num_heads * q * kv * d.head_dim  # q.k^T and attn.v, full rectangle
    mlp = (3 if d.gated_mlp else 2) * 2 * q * h * d.intermediate_size
    return float(proj + attn + mlp)


def _vit_flops(d: Dims, passes: int, tokens: int) -> float:
    """Vision tower: patch embedding + ``vision_layers`` pre-norm ViT blocks over ``tokens`` per pass."""
    vh, vi = d.vision_hidden, d.vision_intermediate
    patches = tokens - (1 if d.vision_cls else 0)
    embed = 2 * patches * (d.vision_patch_dim or 0) * vh
    per_layer = 2 * tokens * vh * 4 * vh + 2 * 2 * tokens * tokens * vh
    per_layer += (3 if d.vision_gated_mlp else 2) * 2 * tokens * vh * vi
    return float(passes * (embed + d.vision_layers * per_layer))


def exact_flops(dims: Dims, vision: int, text: int, k: int | None = None, fastv: Any = None,
                decode_tokens: int = 0, include_lm_head: bool = True, include_vision: bool = False,
                logits_to_keep: int = 1, vision_passes: int = 1, batch: int = 1, dart: Any = None,
                per_layer: Any = None) -> FlopReport:
    """Architecture-aware analytic FLOPs of prefill (+ KV-cached decode steps) of ``batch`` equal sequences.

    Counts matrix products only, as ``torch.utils.flop_counter`` does: q/k/v/o projections (k, v with
    ``num_kv_heads``), the two attention products over the full ``Lq x Lk`` rectangle (masked/causal
    entries included, as SDPA/eager kernels compute them), the MLP (3 matrices if gated), and lm_head over
    ``logits_to_keep`` positions of the prefill (0 = all; ``generate`` uses 1) and 1 position per decode step.

    Decode step ``j`` (``j = 0..decode_tokens-1``) feeds one token; its keys are the cached positions + itself:
    ``vision + text + j + 1`` in layers that kept the vision tokens, ``text + j + 1`` in VTW layers ``>= k``
    (their cache holds text only) and ``text + kept + j + 1`` in FastV and DART (``dart``) layers ``>= K``.
    ``generate(max_new_tokens=n)`` is the prefill plus ``n - 1`` decode steps.

    ``include_vision``: add the vision tower (``vision_passes`` passes: images, AnyRes crops or frames) and
    the projector; Qwen towers take ``vision`` merged tokens (``vision_tokens_in`` patches each).
    """
    d = dims
    rows = layer_tokens(d.num_layers, vision, text, k, fastv, dart, per_layer)
    by_layer = [batch * _layer_flops(d, v + t, v + t) for v, t in rows]
    rep = FlopReport(by_layer=by_layer, prefill=float(sum(by_layer)))
    stock_len = vision + text
    head = 2.0 * d.hidden_size * d.vocab_size
    if include_lm_head:
        positions = stock_len if logits_to_keep in (0, None) else min(logits_to_keep, stock_len)
        rep.lm_head = batch * head * positions
    steps = []
    for j in range(max(decode_tokens, 1)):
        f = sum(_layer_flops(d, 1, v + t + j + 1) for v, t in rows)
        steps.append(batch * (f + (head if include_lm_head else 0.0)))
    rep.decode_total = float(sum(steps)) if decode_tokens > 0 else 0.0
    rep.decode_per_token = rep.decode_total / decode_tokens if decode_tokens > 0 else steps[0]
    if include_vision and d.has_vision:
        if d.vision_tokens_out == 1:  # Qwen: ``vision`` merged tokens, merge^2 patches each, in one pass
            tokens_in, out_tokens = vision * d.vision_tokens_in // max(vision_passes, 1), vision
        else:
            tokens_in, out_tokens = d.vision_tokens_in, vision_passes * d.vision_tokens_out
        rep.vision_tower = batch * _vit_flops(d, vision_passes, tokens_in)
        if d.projector_in:
            widths = [d.projector_in] + [d.projector_hidden] * (d.projector_layers - 1) + [d.projector_out]
            rep.projector = batch * float(sum(2 * out_tokens * a * b for a, b in zip(widths, widths[1:])))
    rep.total = rep.prefill + rep.lm_head + rep.decode_total + rep.vision_tower + rep.projector
    return rep


# -- 2b. calflops' rules (how the paper's authors counted) ------------------------------------------------------
def calflops_layer(d: Dims, q: int, attn: str = "sdpa") -> float:
    """One decoder layer over ``q`` tokens (no cache) as calflops counts it."""
    h, hq, hkv, inter = d.hidden_size, d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim, d.intermediate_size
    linear = 2 * q * (h * hq + 2 * h * hkv + hq * h + (3 if d.gated_mlp else 2) * h * inter)
    activation = q * inter  # F.silu / F.gelu: one per element
    attention = 0
    if attn == "eager":  # torch.matmul for q.k^T and attn.v (2 per multiply-add) + F.softmax (one per element)
        attention = 2 * 2 * d.num_heads * q * q * d.head_dim + d.num_heads * q * q
    return float(linear + activation + attention)


def calflops_flops(dims: Dims, vision: int, text: int, k: int | None = None, fastv: Any = None,
                   attn: str = "sdpa", lm_head_positions: int | None = None, dart: Any = None,
                   per_layer: Any = None) -> float:
    """The prefill FLOPs of the language model under calflops' rules (the unit of Table 2's TFLOPs).

    Layer ``i`` sees the tokens ``layer_tokens`` gives (VTW: text only from ``k``; FastV: its kept vision
    tokens from K); lm_head runs on ``lm_head_positions`` (default: every token of the last layer, as the
    authors' shortened sequences and ``forward()`` without ``logits_to_keep`` compute it). ``attn``: "sdpa"
    (the attention kernel is invisible to calflops) or "eager".
    """
    if attn not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attn must be sdpa, eager or flash_attention_2, got {attn!r}")
    rows = layer_tokens(dims.num_layers, vision, text, k, fastv, dart, per_layer)
    total = sum(calflops_layer(dims, v + t, "eager" if attn == "eager" else "sdpa") for v, t in rows)
    last = sum(rows[-1]) if lm_head_positions is None else lm_head_positions
    return float(total + 2 * last * dims.hidden_size * dims.vocab_size)


# -- 3. operator counters ------------------------------------------------------------------------------------
def vision_text_counts(model: Any, input_ids: Any) -> tuple[int, int]:
    """(vision, text) token counts of the first row of ``input_ids``: vision = the config's image/video ids."""
    from .engine.families import adapter_for, vision_mask

    row = input_ids[0] if input_ids.ndim == 2 else input_ids
    vision = int(vision_mask(row, adapter_for(model).vision_token_ids(model.config)).sum())
    return vision, int(row.shape[0]) - vision


def _module_names(model: Any) -> tuple[str, str]:
    from .engine.families import adapter_for

    text = adapter_for(model).text_model(model)
    head = model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(text)], names[id(head)]


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    b, hq, lq, dq = query_shape
    lk, dv = key_shape[2], value_shape[3]
    return 2 * b * hq * lq * lk * dq + 2 * b * hq * lq * lk * dv


def _torch_counts(model: Any, call) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:  # not in torch's registry: the CPU SDPA kernel would count as 0
        mapping[cpu_sdpa] = _sdpa_cpu_flops
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        call()
    prefix = type(model).__name__
    return {(k[len(prefix) + 1:] if k.startswith(prefix + ".") else ("" if k == prefix else k)): float(sum(v.values()))
            for k, v in counter.get_flop_counts().items()}


def _fvcore_sdpa(inputs, outputs) -> int:
    q, k, v = (i.type().sizes() for i in inputs[:3])
    b, hq, lq, dq = q
    return b * hq * lq * k[2] * dq + b * hq * lq * k[2] * v[3]  # multiply-adds, fvcore's unit


_PIXEL_KWARGS = ("pixel_values", "pixel_values_images", "pixel_values_videos")


def _encoder_outputs(model: Any, inputs: dict) -> dict:
    """Run ``model`` once (untraced) and keep what its image/video feature functions returned."""
    import torch

    from .engine.families import adapter_for

    mm = adapter_for(model).multimodal_model(model)
    seen: dict = {}
    originals = {}
    for kind in ("image", "video"):
        name = f"get_{kind}_features"
        fn = getattr(mm, name, None)
        if fn is None:
            continue
        originals[name] = fn

        def record(*args, _fn=fn, _kind=kind, **kwargs):
            out = _fn(*args, **kwargs)
            seen[_kind] = out
            return out

        setattr(mm, name, record)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for name in originals:
            delattr(mm, name)
    return seen


def _fvcore_counts(model: Any, inputs: dict, forward_kwargs: dict, k: int | None, part: str) -> dict[str, float]:
    import torch
    from fvcore.nn import FlopCountAnalysis

    from .engine.hooks import withdraw

    inputs = dict(inputs)
    if part == "language":
        # Tracing turns sizes into tensors, which some vision code (LLaVA-NeXT's unpadding) cannot take: for the
        # language part, run the vision tower untraced and hand its outputs to the traced forward.
        encoded = _encoder_outputs(model, inputs)
        if encoded:
            inputs = {key: val for key, val in inputs.items() if key not in _PIXEL_KWARGS}
            inputs["mm_encoder_outputs"] = encoded
    # only floating-point tensors are traced inputs; ids, sizes and grids stay Python-side constants
    keys = [key for key, val in inputs.items() if isinstance(val, torch.Tensor) and val.is_floating_point()]
    static = {key: val for key, val in inputs.items() if key not in keys}

    class _Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, *tensors):
            out = self.m(**dict(zip(keys, tensors)), **static, **forward_kwargs)
            return out.logits

    args = tuple(inputs[key] for key in keys)
    if not args:  # jit tracing needs a tensor input: give it a dummy one
        args = (torch.zeros(1),)

        def _forward(self, _dummy):
            return self.m(**static, **forward_kwargs).logits

        _Wrap.forward = _forward
    analysis = FlopCountAnalysis(_Wrap(), args)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _fvcore_sdpa)
    # fvcore also counts some elementwise ops (norms, pooling, upsampling); torch's counter does not.
    for op in ("aten::layer_norm", "aten::group_norm", "aten::batch_norm", "aten::instance_norm",
               "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d",
               "aten::grid_sampler"):
        analysis.set_op_handle(op, None)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    ctx = withdraw(model, k) if k is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        by_module = analysis.by_module()
    return {(name[2:] if name.startswith("m.") else ("" if name == "m" else name)): 2.0 * float(n)
            for name, n in by_module.items()}


def counted_flops(model: Any, inputs: dict, k: int | None = None, backend: str = "torch", part: str = "language",
                  **forward_kwargs: Any) -> float:
    """FLOPs of ``model(**inputs, **forward_kwargs)`` counted by an operator counter (2 FLOPs per multiply-add).

    ``backend``: ``"torch"`` (``torch.utils.flop_counter.FlopCounterMode``; the CPU SDPA kernel, missing from
    its registry, is added with torch's own SDPA formula) or ``"fvcore"`` (``FlopCountAnalysis`` by JIT
    tracing; SDPA is given a handle, norms are not counted, and its multiply-add counts are doubled).
    ``k``: run under ``withdraw(model, k)`` (VTW). ``part``: ``"language"`` (the decoder stack + lm_head, by
    module), ``"vision"`` (everything else: vision tower, projector) or ``"all"``.
    """
    import torch

    from .engine.hooks import withdraw

    if part not in ("language", "vision", "all"):
        raise ValueError(f"part must be 'language', 'vision' or 'all', got {part!r}")
    if backend == "torch":
        def call():
            ctx = withdraw(model, k) if k is not None else contextlib.nullcontext()
            with ctx, torch.no_grad():
                model(**inputs, **forward_kwargs)

        counts = _torch_counts(model, call)
    elif backend == "fvcore":
        counts = _fvcore_counts(model, inputs, forward_kwargs, k, part)
    else:
        raise ValueError(f"backend must be 'torch' or 'fvcore', got {backend!r}")
    total = counts.get("", 0.0) or counts.get("Global", 0.0)
    text_name, head_name = _module_names(model)
    language = counts.get(text_name, 0.0) + counts.get(head_name, 0.0)
    if part == "language":
        return language
    if part == "vision":
        return total - language
    return total


__all__ = ["Dims", "FlopReport", "counted_flops", "dims_for", "exact_flops", "layer_tokens", "paper_flops",
           "vision_text_counts"]
