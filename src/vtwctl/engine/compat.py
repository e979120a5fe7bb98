"""Every transformers internal the engine relies on, behind one named helper each.

The engine hooks stock modules, so it depends on a few things transformers does not promise to
keep stable: the name of the cache keyword (``past_key_values`` became ``cache``), the cache's
mask-size API (``get_mask_sizes(query_length)``, which took cache positions before 5.4), the
layer-type and sliding-window config fields, the rotary embedding's call signature, the forms an
attention mask takes per attention implementation, where ``_attn_implementation`` lives, and how
the model was compiled. Only this module touches them; a new transformers release is checked here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import VTWError

# The releases the test suite runs on (nox -s "tests-transformers-range"): keep both ends tested.
TRANSFORMERS_MIN = (5, 19, 0)
TRANSFORMERS_BELOW = (6, 0, 0)
CACHE_KWARGS = ("cache", "past_key_values")
# flex_attention is refused: the engine's per-call masks would need a BlockMask (or score_mod) per call,
# and inductor's CPU flex kernels fail on both (a C++ compile error, a crash with torch 2.13), so it is untested
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


def transformers_version() -> tuple[int, int, int]:
    import transformers

    parts = []
    for piece in transformers.__version__.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def check_transformers() -> None:
    """A VTWError unless the installed transformers is in the tested range."""
    import transformers

    v = transformers_version()
    if not TRANSFORMERS_MIN <= v < TRANSFORMERS_BELOW:
        lo, hi = ".".join(map(str, TRANSFORMERS_MIN)), ".".join(map(str, TRANSFORMERS_BELOW))
        raise VTWError(f"transformers {transformers.__version__} is not supported by vtwctl's engine: "
                       f"it is tested on transformers >= {lo}, < {hi}; install a release in that range")


# -- configs ---------------------------------------------------------------------------------------------
def text_config(config: Any) -> Any:
    """The language model's config (the config itself for text-only configs)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else getattr(config, "text_config", config)


def logit_transform(model: Any) -> tuple[float | None, float | None]:
    """(scale, softcap): what the model's own ``forward`` does to ``lm_head(norm(h))`` -- Cohere's
    ``logits * logit_scale``, Gemma's ``tanh(logits / cap) * cap`` -- or None for each it does not do.

    Read from the forward's source, not from the config alone: whether the wrapper applies the text
    config's value changes between classes and releases (Aya Vision's forward applies ``logit_scale``
    from transformers 5.25 on, Cohere2 Vision's does not; Gemma 3's wrapper does not soft-cap)."""
    scales, caps = _forward_reads(type(model))
    config = text_config(model.config)
    scale = getattr(config, "logit_scale", None) if scales else None
    cap = getattr(config, "final_logit_softcapping", None) if caps else None
    return scale, cap


@functools.cache
def _forward_reads(cls: type) -> tuple[bool, bool]:
    """Whether ``cls.forward`` reads ``logit_scale`` / ``final_logit_softcapping``: its source is parsed once
    per class, not on every calibration sample."""
    forward = getattr(cls, "forward", None)  # (none: a stand-in holding only lm_head and config)
    try:
        source = inspect.getsource(forward) if forward is not None else ""
    except (OSError, TypeError):
        source = ""
    return "logit_scale" in source, "final_logit_softcapping" in source


def apply_logit_transform(logits: Any, transform: tuple[float | None, float | None]) -> Any:
    """``logits`` as the model's forward returns them, given ``logit_transform(model)``."""
    scale, cap = transform
    if scale is not None:
        logits = logits * scale
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def attn_implementation(model_or_config: Any) -> str:
    """The attention implementation the language model runs ('sdpa' when unset)."""
    config = getattr(model_or_config, "config", model_or_config)
    impl = getattr(text_config(config), "_attn_implementation", None) or getattr(config, "_attn_implementation", None)
    return impl or "sdpa"


def layer_types(config: Any, num_layers: int) -> list[str]:
    """Per decoder layer: 'full_attention', 'sliding_attention', 'chunked_attention', ... (config order)."""
    tc = text_config(config)
    types = getattr(tc, "layer_types", None)
    if types:
        return list(types)[:num_layers]
    window = getattr(tc, "sliding_window", None)
    use = getattr(tc, "use_sliding_window", True)
    kind = "sliding_attention" if window and use is not False else "full_attention"
    return [kind] * num_layers


def sliding_window(config: Any) -> int | None:
    return getattr(text_config(config), "sliding_window", None)


def is_causal_lm(config: Any) -> bool:
    tc = text_config(config)
    return getattr(tc, "is_causal", True) and not getattr(tc, "use_bidirectional_attention", False)


# -- layer call arguments ----------------------------------------------------------------------------------
def cache_from(kwargs: dict) -> Any:
    for name in CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_kwarg(forward: Any) -> str:
    """The name under which ``forward`` (a model's or a decoder layer's) takes the KV cache.

    5.24 renamed ``past_key_values`` to ``cache`` (keeping the old name as a deprecated alias); 5.19
    takes only ``past_key_values`` and swallows an unknown ``cache=`` in ``**kwargs``, silently.
    """
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cached_tokens(cache: Any, layer_idx: int = 0) -> int:
    """How many tokens ``cache`` has seen at ``layer_idx`` (a Python int; may sync a static cache)."""
    if cache is None:
        return 0
    layers = getattr(cache, "layers", None)
    if layers is not None and layer_idx < len(layers) and not getattr(layers[layer_idx], "is_initialized", True):
        return 0
    return int(cache.get_seq_length(layer_idx))


def mask_sizes(cache: Any, query_length: int, layer_idx: int) -> tuple[int, int]:
    """(kv_length, kv_offset) of ``layer_idx``'s keys for a call of ``query_length`` tokens.

    Every supported release takes the call's length (before 5.4 it took its cache positions).
    """
    kv_length, kv_offset = cache.get_mask_sizes(query_length, layer_idx)
    return int(kv_length), int(kv_offset)


def call_rotary(rotary: Any, hidden: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None):
    """The rotary embedding module's (cos, sin) for ``position_ids`` (per layer type where it has one)."""
    params = inspect.signature(rotary.forward).parameters
    if layer_type is not None and "layer_type" in params:
        return rotary(hidden, position_ids, layer_type)
    return rotary(hidden, position_ids)


def rotary_tables(position_embeddings: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cos, sin) [B, S, D] a layer's attention applies, from the ``position_embeddings`` it receives.

    Some releases hand Qwen2-VL's layers one table per M-RoPE component, [3, B, S, D], which the
    attention interleaves by ``mrope_section``; later ones hand over the interleaved [B, S, D].
    """
    cos, sin = position_embeddings
    if cos.ndim == 4:
        cfg = text_config(config)
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        section = list(rope["mrope_section"]) * 2

        def mix(t):
            return torch.cat([m[i % 3] for i, m in enumerate(t.split(section, dim=-1))], dim=-1)

        cos, sin = mix(cos), mix(sin)
    return cos, sin


def layer_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def with_layer_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def output_hidden(output: Any) -> torch.Tensor:
    """The hidden states a decoder layer or model returned (tensor, tuple or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.last_hidden_state


# -- attention masks ---------------------------------------------------------------------------------------
def valid_tokens(mask: Any, query_length: int, cache: Any, past: int,
                 layer_type: str = "full_attention") -> torch.Tensor | None:
    """[B, q] True where a token of the call is not padding, read from any mask form; None: all are.

    A 4D mask (prepared by generate for static caches) is read on its diagonal: a token is padding
    iff it may not see itself. A dict of masks per layer type (hybrid models) is read at
    ``layer_type``, the type of layer 0: transformers sizes each mask on the first layer of its
    type, and layer 0 is never compressed.
    """
    if isinstance(mask, dict):
        mask = mask.get(layer_type, next(iter(mask.values()), None))
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return mask[:, -query_length:].bool()
    if isinstance(mask, torch.Tensor) and mask.ndim == 4:
        first = 0
        if cache is not None and mask.shape[-1] != query_length:
            first = past - mask_sizes(cache, query_length, 0)[1]  # column of the call's first token
        i = torch.arange(query_length, device=mask.device)
        diag = mask[:, 0, i, first + i]
        return diag if diag.dtype == torch.bool else diag > torch.finfo(diag.dtype).min / 2
    raise NotImplementedError(f"withdraw: attention masks of type {type(mask).__name__} are not supported")


def format_mask(allowed: torch.Tensor, impl: str, dtype: torch.dtype, trivially_causal: bool,
                key_valid: torch.Tensor | None = None) -> Any:
    """``allowed`` [B, 1, q, kv] as the attention implementation ``impl`` takes it.

    eager: additive float; sdpa: bool (None when the mask is plain causal, so sdpa's causal kernel
    runs); flash attention: a [B, kv] key mask (its kernel applies causality itself): ``key_valid``
    where given (fill keys excluded, though a fill query attends its own slot), else the keys any
    query may attend.
    """
    if impl == "eager":
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)
    if impl == "sdpa":
        return None if trivially_causal else allowed
    if impl.startswith("flash_attention"):
        keys = key_valid if key_valid is not None else allowed[:, 0].any(1)
        return keys
    raise NotImplementedError(f"withdraw: attention implementation {impl!r} is not supported; "
                              f"use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")


# -- compilation -------------------------------------------------------------------------------------------
def compiled_parts(model: torch.nn.Module) -> list[str]:
    """Names of the parts of ``model`` compiled with torch.compile (whose graphs ignore new hooks)."""
    found = []
    if getattr(model, "_compiled_call", None) is not None:
        found.append("generate's compiled forward (model._compiled_call)")
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if getattr(module, "_compiled_call_impl", None) is not None:
            found.append(f"{label} (Module.compile)")
        forward = module.__dict__.get("forward")
        if forward is not None and hasattr(forward, "_torchdynamo_orig_callable"):
            found.append(f"{label}.forward (torch.compile)")
    return found


def output_collector() -> Any:
    """transformers' collector of ``output_hidden_states``/``output_attentions`` (None where there is none).

    Once a model was called with one of those flags, its layers carry forward hooks that read the
    collector, a ContextVar that dynamo cannot trace; transformers' own compiled forward first ``set``s it
    while compiling, which turns it into a plain global. A compiled step that calls the layers directly
    does the same (``set(None)``: the hooks stay inactive) and ``reset(None)``s it at its end.
    """
    try:
        from transformers.utils import output_capturing
    except ImportError:
        return None
    return getattr(output_capturing, "_active_collector", None)


_GUARDS = {"depth": 0, "saved": None}
_GUARDS_LOCK = threading.Lock()


@contextlib.contextmanager
def hook_guards() -> Iterator[None]:
    """Inside the block, graphs torch.compile traces are guarded on module hooks (dynamo skips those guards by
    default), so a graph traced with the engine's hooks recompiles once they are gone instead of running
    withdrawal after the block. The setting is restored when the last block (of any thread) exits: nothing
    changes outside the blocks, also when blocks of several threads overlap."""
    import torch._dynamo

    with _GUARDS_LOCK:
        if _GUARDS["depth"] == 0:
            _GUARDS["saved"] = torch._dynamo.config.skip_nnmodule_hook_guards
            torch._dynamo.config.skip_nnmodule_hook_guards = False
        _GUARDS["depth"] += 1
    try:
        yield
    finally:
        with _GUARDS_LOCK:
            _GUARDS["depth"] -= 1
            if _GUARDS["depth"] == 0:
                torch._dynamo.config.skip_nnmodule_hook_guards = _GUARDS["saved"]


def compiled_wrappers(model: torch.nn.Module) -> list[str]:
    """The ``torch.compile(module)`` wrappers (``OptimizedModule``) of ``model`` or one of its modules alive in
    this process, where their graphs lack module-hook guards (dynamo's default) and dynamo has compiled
    anything (else no scan: one pass over the objects the garbage collector tracks)."""
    import gc
    import sys

    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None:
        return []
    import torch._dynamo
    from torch._dynamo.utils import counters

    if not torch._dynamo.config.skip_nnmodule_hook_guards or not counters["frames"].get("ok"):
        return []
    names = {id(m): name or type(model).__name__ for name, m in model.named_modules()}
    wrapper = eval_frame.OptimizedModule
    return [f"torch.compile({names[id(obj._orig_mod)]})" for obj in gc.get_objects()
            if issubclass(type(obj), wrapper) and id(getattr(obj, "_orig_mod", None)) in names]
