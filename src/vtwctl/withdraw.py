"""The withdrawal engine: run layers K..N-1 of a stock model on text tokens only.

``with withdraw(model, k):`` registers forward hooks on a stock transformers vision-language model
and removes them on exit. Inside the block every ``model(...)`` and ``model.generate(...)`` runs
layers 0..K-1 on the full sequence; at the entry of layer K the hidden states, rotary position
embeddings, position ids and attention mask are gathered down to the text tokens, so layers K..N-1
compute, attend and cache text tokens only. Decoding steps then never touch vision keys again:
the KV cache of layers >= K holds text positions only.

Layout after withdrawal ("compressed"): for each row the kept (non-vision) tokens of a forward call
are packed to the right in their original order; rows with fewer kept tokens get fill slots on the
left, which are masked out as keys (and attend only to themselves, so no row is all-masked). The
text model's output is scattered back to the stock length, so ``logits`` keep their usual shape;
positions of withdrawn tokens get a zero hidden state.

Positions: ``"keep"`` (default, the paper's choice) keeps every text token's original rotary
position; ``"rearrange"`` renumbers the text tokens so they are contiguous (Table 6).

Vision tokens are the positions holding the config's image/video token ids in calls that carry
visual input (``pixel_values*``); tokens generated later are always text.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .families import adapter_for

_ACTIVE_ATTR = "_vtw_active"
VISUAL_KWARGS = ("pixel_values", "pixel_values_images", "pixel_values_videos", "mm_encoder_outputs")


def carries_visual(kwargs: dict) -> bool:
    """Whether model inputs hold pixels (or encoder outputs), i.e. vision-token ids carry vision features."""
    return any(kwargs.get(name) is not None for name in VISUAL_KWARGS)


@dataclass
class _Stream:
    """Withdrawal bookkeeping for one sequence batch (one KV cache, or one cache-less call)."""

    kv_map: torch.Tensor  # [B, Lc] original position of each compressed key slot, -1 for fill
    full_len: int = 0  # stock (layer 0) sequence length seen so far
    offset: torch.Tensor | None = None  # [B] rearrange: position shift of the latest text token
    pending: torch.Tensor | None = None  # [B] rearrange: start position of a withdrawn run at the end


@dataclass
class _Call:
    """One forward call's compression plan, built at the multimodal model's entry."""

    vision: torch.Tensor  # [B, q] True where the token is withdrawn (vision tokens of a visual call)
    past_len: int  # stock cache length before this call
    q_idx: torch.Tensor | None = None  # [B, Qc] index into the call's tokens, -1 for fill
    stream: _Stream | None = None
    kv_map: torch.Tensor | None = None  # [B, Lc] key slots of the compressed layers after this call
    cache_ref: Any = None
    memo: dict = field(default_factory=dict)
    positions: torch.Tensor | None = None  # stock rotary position ids of this call (from the rotary hook)


def _gather_seq(x: torch.Tensor, idx: torch.Tensor, dim: int, bdim: int = 0) -> torch.Tensor:
    """Gather ``x`` along ``dim`` per batch row (batch dim ``bdim``) with ``idx`` [B, n]; -1 -> 0.

    Dims other than ``bdim`` and ``dim`` broadcast; a batch dim of size 1 is expanded to B.
    """
    dim, bdim = dim % x.ndim, bdim % x.ndim
    idx = idx.to(x.device)  # layers may sit on different GPUs (device_map="auto")
    b = idx.shape[0]
    if x.shape[bdim] == 1 and b > 1:
        x = x.expand(*x.shape[:bdim], b, *x.shape[bdim + 1 :])
    shape = [1] * x.ndim
    shape[bdim], shape[dim] = b, idx.shape[1]
    index = idx.clamp(min=0).reshape(shape)
    expand = list(x.shape)
    expand[dim] = idx.shape[1]
    return x.gather(dim, index.expand(expand))


class Engine:
    """Hooks that drop the tokens chosen by ``select`` before layer ``k`` (VTW: all vision tokens)."""

    def __init__(self, model: nn.Module, k: int, positions: str):
        self.adapter = adapter_for(model)
        self.model = model
        self.k = k
        self.positions = positions
        self.vision_ids = torch.tensor(self.adapter.vision_token_ids(model.config))
        self.streams: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.call: _Call | None = None
        self.handles: list = []

    # -- hooks ---------------------------------------------------------------------------------
    def install(self) -> None:
        mm, text = self.adapter.multimodal_model(self.model), self.adapter.text_model(self.model)
        layers = text.layers
        self.handles.append(mm.register_forward_pre_hook(self._on_call, with_kwargs=True))
        self.handles.append(mm.register_forward_hook(self._on_call_end, with_kwargs=True, always_call=True))
        self.handles.append(text.register_forward_hook(self._on_text_out, with_kwargs=True))
        if self.positions == "rearrange":
            self.handles.append(text.rotary_emb.register_forward_pre_hook(self._on_rotary, with_kwargs=True))
        for i in range(self.k, len(layers)):
            self.handles.append(layers[i].register_forward_pre_hook(self._on_layer, with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.call = None

    def _on_call(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None else 0
        visual = carries_visual(kwargs)
        if input_ids is not None:
            vision = torch.isin(input_ids, self.vision_ids.to(input_ids.device))
        elif embeds is not None:
            emb = module.get_input_embeddings()
            ids = self.vision_ids.to(embeds.device)
            vision = (embeds[..., None, :] == emb(ids).to(embeds.dtype)).all(-1).any(-1)
        else:
            raise ValueError("withdraw: the model was called without input_ids or inputs_embeds")
        if not visual:
            vision = torch.zeros_like(vision)
        self.call = _Call(vision=vision, past_len=past)

    def _on_call_end(self, module, args, kwargs, output):
        call, self.call = self.call, None
        if call is not None and call.stream is not None and call.cache_ref is not None:
            call.stream.kv_map = call.kv_map
            call.stream.full_len = call.past_len + call.vision.shape[1]

    def _on_rotary(self, module, args, kwargs):
        pos = args[1] if len(args) > 1 else kwargs.get("position_ids")
        if self.call is not None and self.call.positions is None:
            self.call.positions = pos

    def _on_text_out(self, module, args, kwargs, output):
        call = self.call
        if call is None or call.q_idx is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        b, q = call.vision.shape
        q_idx = call.q_idx.to(hidden.device)
        full = hidden.new_zeros(b, q, hidden.shape[-1])
        valid = q_idx >= 0
        rows = torch.arange(b, device=hidden.device)[:, None].expand_as(q_idx)
        full[rows[valid], q_idx[valid]] = hidden[valid]
        if isinstance(output, tuple):
            return (full, *output[1:])
        output.last_hidden_state = full
        return output

    def _on_layer(self, module, args, kwargs):
        call = self.call
        if call is None:
            raise RuntimeError("withdraw: a decoder layer ran outside the multimodal model's forward")
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layer_idx = self._layer_index(module)
        if call.q_idx is None:  # layer K: withdraw
            call.vision = self.select(call, hidden)
            self._plan(call, cache, hidden.device)
            hidden = _gather_seq(hidden, call.q_idx, 1)
            hidden = hidden * (call.q_idx >= 0)[..., None].to(hidden.dtype)
        new_kwargs = dict(kwargs)
        for name in ("position_embeddings", "position_ids", "attention_mask"):
            if name in kwargs:
                new_kwargs[name] = self._compress(call, name, kwargs[name], cache, layer_idx, hidden)
        if args:
            return (hidden, *args[1:]), new_kwargs
        new_kwargs["hidden_states"] = hidden
        return args, new_kwargs

    def _layer_index(self, module) -> int:
        attn = getattr(module, "self_attn", None)
        idx = getattr(attn, "layer_idx", None)
        if idx is None:
            layers = list(self.adapter.text_model(self.model).layers)
            idx = layers.index(module)
        return int(idx)

    # -- planning ------------------------------------------------------------------------------
    def select(self, call: _Call, hidden: torch.Tensor) -> torch.Tensor:
        """Which tokens of this call to withdraw at layer K: every vision token (VTW)."""
        return call.vision

    def _plan(self, call: _Call, cache, device) -> None:
        keep = ~call.vision.to(device)
        b, q = keep.shape
        n_keep = keep.sum(1)
        qc = max(int(n_keep.max()), 1)
        # right-aligned compressed slots: slot j of row r holds the (j - (qc - n_r))-th kept token
        order = torch.arange(q, device=device).expand(b, q)
        kept_pos = torch.where(keep, order, q + order)  # kept tokens first, in order
        kept_pos = kept_pos.sort(1).values[:, :qc]
        slot = torch.arange(qc, device=device).expand(b, qc)
        shift = (qc - n_keep)[:, None]
        src = slot - shift
        q_idx = torch.where(src >= 0, kept_pos.gather(1, src.clamp(min=0)), torch.full_like(src, -1))
        call.q_idx = q_idx

        stream = None
        if cache is not None and call.past_len > 0:
            stream = self.streams.get(cache)
            if stream is None or stream.full_len != call.past_len:
                raise RuntimeError(
                    "withdraw: this KV cache was filled outside the withdraw() block (or edited); "
                    "start generation inside the block"
                )
        if stream is None:
            stream = _Stream(kv_map=torch.empty(b, 0, dtype=torch.long, device=device))
            if cache is not None:
                self.streams[cache] = stream
                call.cache_ref = cache
        elif cache is not None:
            call.cache_ref = cache
        if stream.kv_map.shape[0] != b:  # beam search / batch expansion after prefill
            rep = b // stream.kv_map.shape[0]
            stream.kv_map = stream.kv_map.repeat_interleave(rep, 0)
            for name in ("offset", "pending"):
                val = getattr(stream, name)
                if val is not None:
                    setattr(stream, name, val.repeat_interleave(rep, 0))
        call.stream = stream
        chunk = torch.where(q_idx >= 0, q_idx + call.past_len, torch.full_like(q_idx, -1))
        call.kv_map = torch.cat([stream.kv_map.to(device), chunk], 1)

    # -- per-argument compression --------------------------------------------------------------
    def _compress(self, call: _Call, name: str, value, cache, layer_idx: int, hidden):
        if value is None and name != "attention_mask":
            return None
        key = (name, id(value), layer_idx if name == "attention_mask" and cache is not None else None)
        if key not in call.memo:
            if name == "position_embeddings":
                call.memo[key] = self._positions(call, value, hidden)
            elif name == "position_ids":
                out = _gather_seq(value, call.q_idx, -1, -2)
                if self.positions == "rearrange":
                    out = out - self._shift(call).to(out.dtype)
                call.memo[key] = out
            else:
                call.memo[key] = self._mask(call, value, cache, layer_idx, hidden)
        return call.memo[key]

    def _positions(self, call: _Call, value, hidden):
        """cos/sin [B, q, D] -> [B, Qc, D]; recomputed from shifted positions for "rearrange"."""
        if self.positions == "keep":
            return tuple(_gather_seq(t, call.q_idx, -2, -3) for t in value)
        pos = _gather_seq(self._stock_positions(call), call.q_idx, -1, -2)  # [B, Qc] or [3, B, Qc]
        pos = pos - self._shift(call).to(pos.dtype)
        return self.adapter.text_model(self.model).rotary_emb(hidden, pos)

    def _stock_positions(self, call: _Call) -> torch.Tensor:
        if call.positions is None:
            raise RuntimeError("withdraw(positions='rearrange'): rotary position ids were not observed")
        return call.positions

    def _shift(self, call: _Call) -> torch.Tensor:
        """Rearrange: how far each compressed slot's position moves down, [B, Qc].

        A text token right after a run of withdrawn tokens takes the position of the run's first
        token; every later token moves down by the same amount (accumulated over calls).
        """
        if "shift" in call.memo:
            return call.memo["shift"]
        pos = self._stock_positions(call)
        pos = pos[0] if pos.ndim == 3 else pos  # M-RoPE: a text token has the same id in all components
        b, q = call.vision.shape
        pos = pos.expand(b, q) if pos.shape[0] == 1 else pos
        stream, wd = call.stream, call.vision.to(pos.device)
        idx = torch.arange(q, device=pos.device).expand(b, q)
        prev_wd = torch.cat([wd.new_zeros(b, 1), wd[:, :-1]], 1)
        run_start = wd & ~prev_wd  # first token of each withdrawn run
        start_idx = torch.where(run_start, idx, torch.full_like(idx, -1)).cummax(1).values
        start_pos = pos.gather(1, start_idx.clamp(min=0))
        ends_run = ~wd & prev_wd & (start_idx >= 0)
        gap = torch.where(ends_run, pos - start_pos, torch.zeros_like(pos))
        if stream.pending is not None:  # a withdrawn run that ended the previous call
            first = ~wd[:, 0] & (stream.pending >= 0)
            gap[:, 0] += torch.where(first, pos[:, 0] - stream.pending, torch.zeros_like(stream.pending))
        base = stream.offset if stream.offset is not None else torch.zeros(b, dtype=pos.dtype, device=pos.device)
        total = base[:, None] + gap.cumsum(1)
        call.memo["shift"] = _gather_seq(total, call.q_idx, 1)
        stream.offset = total[:, -1]
        last_run = torch.where(wd[:, -1], start_pos[:, -1], torch.full_like(base, -1))
        carried = stream.pending if stream.pending is not None else torch.full_like(base, -1)
        stream.pending = torch.where(wd.all(1), carried, last_run)
        return call.memo["shift"]

    def _mask(self, call: _Call, mask, cache, layer_idx: int, hidden):
        device = mask.device if isinstance(mask, torch.Tensor) else hidden.device
        kv_map = call.kv_map.to(device)
        b, qc = call.q_idx.shape
        past_c = kv_map.shape[1] - qc
        width = kv_map.shape[1]
        if cache is not None:
            width = int(cache.get_mask_sizes(qc, layer_idx)[0])
            if width < kv_map.shape[1]:
                raise NotImplementedError("withdraw: sliding-window caches are not supported")
        if width > kv_map.shape[1]:  # static cache: slots not yet written are masked out
            kv_map = torch.cat([kv_map, kv_map.new_full((b, width - kv_map.shape[1]), -1)], 1)
        kv_ok = kv_map >= 0
        q_fill = call.q_idx.to(device) < 0
        impl = getattr(self.model.config, "_attn_implementation", None) or "sdpa"

        if mask is None:  # no padding in the stock call: causal over kept keys
            if bool(kv_ok.all()):
                return None  # text-only and causal: sdpa's is_causal / flash's default path
            if "flash" in impl:
                return kv_ok
            allowed = self._causal(kv_ok, past_c, qc)
        elif isinstance(mask, torch.Tensor) and mask.ndim == 2:  # flash attention: key padding mask
            return _gather_seq(mask, kv_map, 1).bool() & kv_ok
        elif isinstance(mask, torch.Tensor) and mask.ndim == 4:  # [B, 1, q, kv] bool or additive float
            src = _gather_seq(_gather_seq(mask, call.q_idx, 2), kv_map, 3)
            allowed = src if src.dtype == torch.bool else src > torch.finfo(src.dtype).min / 2
            allowed = allowed & kv_ok[:, None, None, :] & ~q_fill[:, None, :, None]
        else:
            raise NotImplementedError(f"withdraw: attention masks of type {type(mask).__name__} are not supported")
        # fill query slots attend to themselves only, so that no softmax row is empty
        slots = torch.arange(qc, device=allowed.device)
        diag = torch.zeros_like(allowed)
        diag[:, :, slots, past_c + slots] = True
        allowed = allowed | (diag & q_fill[:, None, :, None])
        if impl == "eager" or (mask is not None and mask.dtype != torch.bool):
            dtype = mask.dtype if mask is not None and mask.dtype.is_floating_point else hidden.dtype
            return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)
        return allowed

    @staticmethod
    def _causal(kv_ok: torch.Tensor, past_c: int, qc: int) -> torch.Tensor:
        width = kv_ok.shape[1]
        qpos = past_c + torch.arange(qc, device=kv_ok.device)
        kpos = torch.arange(width, device=kv_ok.device)
        causal = kpos[None, :] <= qpos[:, None]
        return causal[None, None] & kv_ok[:, None, None, :]


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers of the language model inside ``model``."""
    return len(adapter_for(model).text_model(model).layers)


@contextlib.contextmanager
def withdraw(model: nn.Module, k: int, positions: str = "keep") -> Iterator[nn.Module]:
    """Run Visual Tokens Withdrawal at layer ``k`` (0-based) inside the block.

    Layers ``0..k-1`` see every token; layers ``k..N-1`` see text tokens only, in forward calls
    and in ``generate`` (their KV cache holds text positions only). ``k == N`` is the stock model.
    ``positions`` is ``"keep"`` (original rotary positions, the paper's default) or
    ``"rearrange"`` (contiguous text positions). The model is left exactly as it was on exit,
    also when the block raises.
    """
    n = num_layers(model)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in 0..{n} (the model has {n} decoder layers), got {k!r}")
    if positions not in ("keep", "rearrange"):
        raise ValueError(f"positions must be 'keep' or 'rearrange', got {positions!r}")
    with active(model, Engine(model, k, positions), install=k < n):
        yield model


@contextlib.contextmanager
def active(model: nn.Module, engine: Engine, install: bool = True) -> Iterator[Engine]:
    """Install ``engine``'s hooks for the block; remove them on exit, also on error. Blocks do not nest."""
    if getattr(model, _ACTIVE_ATTR, False):
        raise RuntimeError("withdraw()/fastv() is already active on this model; blocks do not nest")
    if install:
        engine.install()
    object.__setattr__(model, _ACTIVE_ATTR, True)
    try:
        yield engine
    finally:
        engine.remove()
        object.__delattr__(model, _ACTIVE_ATTR)
