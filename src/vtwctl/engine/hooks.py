"""The withdrawal engine: run layers K..N-1 of a stock model on text tokens only (or on the tokens a policy keeps).

``with withdraw(model, k):`` registers forward hooks on a stock transformers vision-language model
and removes them on exit. Inside the block every ``model(...)`` and ``model.generate(...)`` runs
layers 0..K-1 on the full sequence; at the entry of layer K the hidden states, rotary position
embeddings, position ids and attention mask are gathered down to the kept tokens (text, not
padding), so layers K..N-1 compute, attend and cache kept tokens only. Decoding steps then never
touch vision keys again: the KV cache of layers >= K holds text positions only.

Which tokens leave is a policy's choice (``vtwctl.engine.policies``: VTW, VTW†, Rand, FastV, DART,
PyramidDrop; ``apply(model, policy)`` runs any of them). A policy may withdraw in several stages
(``Policy.stages``, increasing layers): at each stage's first layer the tokens still kept are offered to
it again, and the layers of each stage run on, and cache, that stage's kept tokens. The hook class only
wires the model to the tensor functions of ``vtwctl.engine.ops`` (masks, rotary tables and positions,
deepstack, scatter) and ``vtwctl.engine.plan`` (packing, key maps, position shifts), and keeps the current
call and each KV cache's bookkeeping (``vtwctl.engine.state``); every transformers internal it relies on is in
``vtwctl.engine.compat``, every family difference in ``vtwctl.engine.families``. See docs/engine.md.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ArgumentError, check_k
from . import compat, ops, plan
from .blocks import Blocks, on_thread
from .families import adapter_for, vision_mask
from .policies import Attention, Policy, Tokens
from .policies.vtw import VTW
from .state import Call, Stage, Streams
from .support import VISUAL_KWARGS, carries_visual, check_prompt_end, check_supported, num_layers  # noqa: F401

_BLOCKS = Blocks()  # the threads inside a withdraw()/apply() block on each model (per thread, they do not nest)
_TOKEN_KWARGS = ("token_type_ids", "mm_token_type_ids", "moe_mm_token_type_ids")


class Engine:
    """Hooks that drop the tokens a policy selects before its layer ``k`` (``vtwctl.engine.policies``; an
    int ``policy`` is VTW at that layer: every vision token).

    Layers ``start..N-1`` (``start = max(k, 1)``) run on the packed kept tokens. At ``k = 0`` layer
    0 still runs on the full sequence, with withdrawn keys masked out, so that the cache keeps its
    stock length at layer 0, from which transformers derives positions and mask sizes. A policy with
    several ``stages`` (k = stages[0] < stages[1] < ...) is offered the tokens still kept again at the
    first layer of each later stage; stage j's layers run on its packed tokens, and their caches hold
    exactly those (each stage has its own key map, ``state.Stage``). The hooks keep
    the current call (``state.Call``) and each cache's stream (``state.Streams``); the tensor work is
    in ``vtwctl.engine.ops`` and ``vtwctl.engine.plan``.
    """

    def __init__(self, model: nn.Module, policy: Policy | int, positions: str):
        self.policy = VTW(policy) if isinstance(policy, int) else policy
        self.adapter = adapter_for(model)
        self.model = model
        k = self.k = self.policy.k
        self.start = max(k, 1)
        self.stages = tuple(self.policy.stages)
        self.positions = positions
        self.mm, self.text = self.adapter.multimodal_model(model), self.adapter.text_model(model)
        self.layers = list(self.text.layers)
        # the stage each layer >= start runs in (stage j: stages[j] <= layer < stages[j + 1])
        self.stage_of = {i: sum(1 for s in self.stages[1:] if s <= i) for i in range(self.start, len(self.layers))}
        self.types = compat.layer_types(model.config, len(self.layers))
        window = compat.sliding_window(model.config)
        self.windows = [window if t == "sliding_attention" else None for t in self.types]
        self.impl = compat.attn_implementation(model)
        # sdpa runs its causal kernel for a None mask only where the module says it is causal (not PaliGemma)
        self.causal_kernel = all(getattr(layer.self_attn, "is_causal", True) for layer in self.layers)
        self.vision_ids = self.adapter.vision_token_ids(model.config)
        self.streams = Streams(len(self.stages))
        self.call: Call | None = None
        self.handles: list = []
        self.thread = threading.get_ident()  # the thread whose calls this engine changes

    # -- wiring ----------------------------------------------------------------------------------
    def _own(self, fn):
        """``fn`` as a hook that acts on this engine's thread's calls only: another thread's calls of the same
        model (stock, or inside its own block with another K) pass through untouched (``blocks.on_thread``)."""
        return on_thread(fn, self.thread)

    def install(self) -> None:
        own = self._own
        # pre-hooks run in registration order, forward hooks too: the multimodal model's come first and
        # last, so that a family whose multimodal model is its language model (Chameleon) works as well
        self.handles.append(self.mm.register_forward_pre_hook(own(self._on_call), with_kwargs=True))
        if self.adapter.deepstack:
            self.handles.append(self.text.register_forward_pre_hook(own(self._on_text_in), with_kwargs=True))
        self.handles.append(self.text.register_forward_hook(own(self._on_text_out), with_kwargs=True))
        self.handles.append(self.mm.register_forward_hook(own(self._on_call_end), with_kwargs=True, always_call=True))
        if self.positions == "rearrange":
            self.handles.append(self.text.rotary_emb.register_forward_pre_hook(own(self._on_rotary),
                                                                               with_kwargs=True))
        for i in range(self.k, len(self.layers)):
            self.handles.append(self.layers[i].register_forward_pre_hook(own(self._hook_layer(i)), with_kwargs=True))
            if i >= self.start:
                self.handles.append(self.layers[i].register_forward_hook(own(self._hook_layer_out(i))))
        for i in self.policy.observe_layers:  # what the policy reads (FastV: attention at layer K-1)
            self.handles.append(self.layers[i].self_attn.register_forward_pre_hook(own(self._hook_observe(i)),
                                                                                   with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.call = None

    def key_map(self, layer: int) -> torch.Tensor | None:
        """Original index of each key slot layer ``layer`` attends to in the current call (None: stock)."""
        call = self.call
        if call is None or layer < self.k:
            return None
        if layer < self.start:
            return call.full_map
        j = self.stage_of[layer]
        return call.stages[j].kv_map if j < len(call.stages) else None

    def _hook_layer(self, idx: int):
        def hook(module, args, kwargs):
            return self._on_layer(idx, args, kwargs)
        return hook

    def _hook_layer_out(self, idx: int):
        def hook(module, args, output):
            return self._on_layer_out(idx, output)
        return hook

    def _hook_observe(self, idx: int):
        def hook(module, args, kwargs):
            call = self.call
            if call is None or not bool(call.vision.any()):  # policies observe calls with vision tokens only
                return
            hidden = args[0] if args else kwargs["hidden_states"]
            cos, sin = compat.rotary_tables(kwargs["position_embeddings"], self.model.config)
            self.policy.observe(idx, module, hidden, cos, sin, kwargs.get("attention_mask"))
        return hook

    # -- a call: entry and end -------------------------------------------------------------------
    def _on_call(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        visual = carries_visual(kwargs)
        if input_ids is not None:
            vision = vision_mask(input_ids, self.vision_ids, visual=visual)
        elif embeds is not None:
            vision = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
            if visual:
                table = module.get_input_embeddings()(torch.tensor(self.vision_ids, device=embeds.device))
                vision = (embeds[..., None, :] == table.to(embeds.dtype)).all(-1).any(-1)
        else:
            raise ValueError("withdraw: the model was called without input_ids or inputs_embeds")
        b, q = vision.shape
        cache = compat.cache_from(kwargs)
        stream = self.streams.for_call(cache, b, vision.device)
        valid = compat.valid_tokens(kwargs.get("attention_mask"), q, cache, stream.full_len, self.types[0])
        valid = torch.ones_like(vision) if valid is None else valid.to(vision.device)
        if visual:
            check_prompt_end(vision, valid)
        block = None
        tt = kwargs.get("token_type_ids")
        if tt is not None and (visual or stream.full_len == 0):  # as the stock models: prefill only
            block = self.adapter.attention_blocks(tt[:, -q:], valid)
        self.call = Call(vision=vision, valid=valid, past=stream.full_len, stream=stream, cache=cache,
                         visual=visual, block=block)

    def _on_call_end(self, module, args, kwargs, output):
        call, self.call = self.call, None
        if call is not None and call.cache is not None:
            call.stream.commit(call)

    def _on_rotary(self, module, args, kwargs):
        pos = args[1] if len(args) > 1 else kwargs.get("position_ids")
        if self.call is not None and self.call.positions is None:
            self.call.positions = pos

    def _on_text_in(self, module, args, kwargs):
        """Deepstack: the text model adds visual features after its first layers. Features for layers
        >= start would land on withdrawn tokens, so the engine takes them over (kept vision tokens only)."""
        embeds = kwargs.get("deepstack_visual_embeds")
        if self.call is None or not embeds or len(embeds) <= self.start:
            return None
        self.call.deep = (kwargs.get("visual_pos_masks"), list(embeds[self.start :]))
        return args, {**kwargs, "deepstack_visual_embeds": list(embeds[: self.start])}

    def _on_text_out(self, module, args, kwargs, output):
        call = self.call
        if call is None or call.q_idx is None:
            return output
        q = call.vision.shape[1]
        last = compat.output_hidden(output)
        full = ops.scatter(last, call.q_idx, q)
        if self.policy.fill == "last_kept" and bool(call.vision.any()):
            full = ops.last_kept(full, ~call.selected.to(full.device) & call.valid.to(full.device))
        hidden_states = getattr(output, "hidden_states", None)
        if hidden_states:
            def back(h):  # a compressed layer output: scattered from its stage's layout
                j = call.compressed.get(id(h), len(call.stages) - 1 if h is last else None)
                return h if j is None else ops.scatter(h, call.stages[j].q_idx, q)
            output.hidden_states = tuple(back(h) for h in hidden_states)
        if isinstance(output, tuple):
            return (full, *output[1:])
        output.last_hidden_state = full
        return output

    # -- a layer >= K: its inputs and output -----------------------------------------------------
    def _on_layer(self, idx: int, args, kwargs):
        call = self.call
        if call is None:
            raise RuntimeError("withdraw: a decoder layer ran outside the multimodal model's forward")
        hidden = compat.layer_hidden(args, kwargs)
        cache = compat.cache_from(kwargs)
        if cache is not None and call.cache is None:  # a cache the language model created for this call
            call.cache = cache
            self.streams.adopt(cache, call.stream)
        if idx < self.start:  # K = 0: layer 0 on the full sequence, withdrawn keys masked
            if call.full_map is None:
                q_all = ops.full_queries(call.vision, call.valid)
                call.full_map = torch.cat([call.stream.full_map, plan.chunk_map(q_all, call.past)], 1)
                call.full_block = ops.key_blocks(call.block, q_all, call.stream.full_block, call.stream.full_map)
            return args, {**kwargs, "attention_mask": self._mask(call, cache, idx, hidden, masked=True)}
        j = self.stage_of[idx]
        if len(call.stages) <= j:  # the first layer of stage j (layer `start` for the first): withdraw
            hidden = self._plan(call, j, idx, hidden, kwargs)
        stage = call.stages[j]
        new = dict(kwargs)
        new["attention_mask"] = self._mask(call, cache, idx, hidden, masked=False, stage=j)
        if "position_embeddings" in kwargs:
            new["position_embeddings"] = self._stage_rotary(call, j, kwargs["position_embeddings"], hidden,
                                                            self.types[idx])
        if isinstance(kwargs.get("position_ids"), torch.Tensor):
            new["position_ids"] = call.once(("position_ids", j), lambda: ops.position_ids(
                kwargs["position_ids"], stage.q_idx, self._shift(call, j)))
        if kwargs.get("cache_position") is not None:  # transformers < 5.x: where static caches write
            past = stage.kv_map.shape[1] - stage.q_idx.shape[1]
            new["cache_position"] = torch.arange(past, past + stage.q_idx.shape[1], device=hidden.device)
        for name in _TOKEN_KWARGS:
            if isinstance(kwargs.get(name), torch.Tensor):
                new[name] = call.once(("token_kwarg", j, name),
                                      lambda n=name: plan.gather_seq(kwargs[n], stage.q_idx, -1, -2))
        return compat.with_layer_hidden(args, new, hidden)

    def _on_layer_out(self, idx: int, output):
        call = self.call
        if call is None:
            return output
        hidden = compat.output_hidden(output)
        j = self.stage_of[idx]
        call.compressed[id(hidden)] = j
        if call.deep is not None and idx - self.start < len(call.deep[1]):
            hidden = ops.add_deepstack(hidden, call.deep[0], call.stages[j].q_idx, call.deep[1][idx - self.start])
            output = hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])
        call.compressed[id(hidden)] = j
        return output

    # -- per call and stage: the plan, and what every layer of the stage gets ------------------------
    def _plan(self, call: Call, j: int, idx: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Stage ``j`` at its first layer ``idx``: the policy's selection among the tokens still kept, the
        stage's packed layout and key slots (``call.stages[j]``); returns the hidden states gathered to it."""
        device = hidden.device
        if j == 0:
            index = torch.arange(call.vision.shape[1], device=device).expand(call.vision.shape)
            valid, vision = call.valid.to(device), call.vision.to(device)
        else:
            index = call.stages[j - 1].q_idx.to(device)
            valid = index >= 0
            vision = plan.gather_seq(call.vision.to(device), index, 1) & valid
        attention = None
        if self.stages[j] == idx and "position_embeddings" in kwargs:  # (not K = 0's masked layer 0)
            attention = functools.partial(self._attention, call, j, idx, hidden, kwargs["position_embeddings"],
                                          index, valid)
        tokens = Tokens(vision=vision, valid=valid, hidden=hidden, past=call.past,
                        norm=getattr(self.text, "norm", None), layer=self.stages[j], index=index,
                        attention=attention)
        selected = self.policy.select(tokens).to(device)
        keep = ~selected & valid
        decode = not call.visual and call.past > 0  # no vision tokens: every slot is a kept token or padding
        local = plan.pack(keep, width=keep.shape[1] if decode else None)  # into the current tokens
        if j == 0:
            q_idx, withdrawn = local, selected
        else:
            q_idx = torch.where(local >= 0, plan.gather_seq(index, local, 1), -1)
            hits = torch.zeros(call.vision.shape, dtype=torch.long, device=device)
            hits.scatter_add_(1, index.clamp(min=0), (selected & valid).long())
            withdrawn = call.stages[j - 1].withdrawn.to(device) | (hits > 0)
        stream = call.stream
        old = stream.kv_maps[j].to(device)
        call.stages.append(Stage(q_idx=q_idx, kv_map=torch.cat([old, plan.chunk_map(q_idx, call.past)], 1),
                                 kv_block=ops.key_blocks(call.block, q_idx, stream.kv_blocks[j], old),
                                 withdrawn=withdrawn))
        hidden = plan.gather_seq(hidden, local, 1)
        return hidden * (local >= 0)[..., None].to(device, hidden.dtype)

    def _attention(self, call: Call, j: int, idx: int, hidden: torch.Tensor, value, index: torch.Tensor,
                   valid: torch.Tensor) -> Attention:
        """``Tokens.attention`` at stage ``j``'s first layer ``idx``: what its attention module would get for
        the tokens still kept before the selection (the mask over this call's tokens only)."""
        layer = self.layers[idx]
        norm = getattr(layer, "input_layernorm", None)
        if norm is None:
            raise ArgumentError(f"{type(layer).__name__} has no input_layernorm: its attention inputs cannot be "
                                "computed before the layer runs")
        if j > 0:
            value = self._stage_rotary(call, j - 1, value, hidden, self.types[idx])
        cos, sin = compat.rotary_tables(value, self.model.config)
        b, q = index.shape
        cos, sin = cos.expand(b, q, -1), sin.expand(b, q, -1)
        pos = plan.chunk_map(torch.where(valid, index, -1), call.past)
        blocks = {}
        if call.block is not None:
            blk = torch.where(valid, plan.gather_seq(call.block.to(index.device), index, 1), -1)
            blocks = dict(key_block=blk, query_block=blk)
        mask = plan.allowed_keys(pos, pos, torch.arange(q, device=index.device), self.windows[idx], **blocks)
        return Attention(module=layer.self_attn, hidden=norm(hidden), cos=cos, sin=sin, mask=mask)

    def _mask(self, call: Call, cache, idx: int, hidden: torch.Tensor, masked: bool, stage: int = 0):
        window = self.windows[idx]
        plan_ = None if masked else call.stages[stage]
        q_idx = ops.full_queries(call.vision, call.valid) if masked else plan_.q_idx
        qlen = q_idx.shape[1]
        kv_length, kv_offset = compat.mask_sizes(cache, qlen, idx) if cache is not None else (qlen, 0)
        return call.once(("mask", masked, stage, window, kv_length, kv_offset), lambda: ops.layer_mask(
            call.full_map if masked else plan_.kv_map, q_idx, call.past, kv_length=kv_length, kv_offset=kv_offset,
            window=window, block_map=call.full_block if masked else plan_.kv_block, impl=self.impl,
            dtype=hidden.dtype, causal_kernel=self.causal_kernel, device=hidden.device))

    def _stage_rotary(self, call: Call, j: int, value, hidden: torch.Tensor, layer_type: str):
        """Stage ``j``'s rotary tables, computed once per call (and layer type)."""
        return call.once(("rotary", j, layer_type), lambda: self._rotary(call, j, value, hidden, layer_type))

    def _rotary(self, call: Call, j: int, value, hidden: torch.Tensor, layer_type: str):
        """cos/sin [B, q, D] -> [B, Qc, D]; recomputed from shifted positions for "rearrange"."""
        q_idx = call.stages[j].q_idx
        if self.positions == "keep":
            return ops.rotary(value, q_idx)
        if call.positions is None:
            raise RuntimeError("withdraw(positions='rearrange'): rotary position ids were not observed")
        pos = ops.position_ids(call.positions, q_idx, self._shift(call, j))  # [B, Qc] or [3, B, Qc]
        return compat.call_rotary(self.text.rotary_emb, hidden, pos, layer_type)

    def _shift(self, call: Call, j: int) -> torch.Tensor | None:
        """Rearrange: how far each of stage ``j``'s slots moves down, [B, Qc] (None under "keep"): by every
        token withdrawn at stage j or before (each stage carries its own shift across calls)."""
        if self.positions != "rearrange":
            return None

        def shift():
            stream, stage = call.stream, call.stages[j]
            out, stream.offsets[j], stream.pendings[j] = ops.rearrange_shift(
                call.positions, stage.withdrawn, stage.q_idx, stream.offsets[j], stream.pendings[j])
            return out

        return call.once(("shift", j), shift)


@contextlib.contextmanager
def withdraw(model: nn.Module, k: int, positions: str = "keep") -> Iterator[nn.Module]:
    """Run Visual Tokens Withdrawal at layer ``k`` (0-based) inside the block.

    Layers ``0..k-1`` see every token; layers ``k..N-1`` see text tokens only, in forward calls
    and in ``generate`` (their KV cache holds text positions only). ``k == N`` is the stock model.
    ``positions`` is ``"keep"`` (original rotary positions, the paper's default) or
    ``"rearrange"`` (contiguous text positions). The model is left exactly as it was on exit,
    also when the block raises.

    Threads: the block changes the calls its own thread makes, nothing else. Other threads may use the
    same model at the same time, stock or inside their own block (with any K); blocks do not nest within
    one thread. Raises ``vtwctl.ArgumentError`` (a ``VTWError`` and a ``ValueError``) for a ``k`` that is
    not an integer in 0..N or a bad ``positions``, ``VTWError`` for a model it cannot run on (an
    unsupported family, a ``torch.compile`` wrapper of it without hook guards), ``RuntimeError`` for a
    block nested in another on the same model and thread.
    """
    with apply(model, VTW(k), positions):
        yield model


@contextlib.contextmanager
def apply(model: nn.Module, policy: Policy, positions: str = "keep", lo: int = 0,
          what: str = "K") -> Iterator[Engine]:
    """Run ``policy`` (``vtwctl.engine.policies``) on ``model`` inside the block: its K checked (``lo``..N,
    named ``what``), the model checked where the policy withdraws anything, the engine's hooks installed."""
    n = num_layers(model)
    if policy.k is None:
        raise ArgumentError(f"{what} is None: give the layer to withdraw at, an integer in {lo}..{n} ({n} = the "
                            "stock model)")
    check_k(policy.k, n, lo=lo, what=what)
    if positions not in ("keep", "rearrange"):
        raise ArgumentError(f"positions must be 'keep' or 'rearrange', got {positions!r}")
    check_stages(policy, n, lo, what)
    runs = policy.active(n)
    if runs:
        check_supported(model, policy.k)
    with active(model, Engine(model, policy, positions), install=runs) as engine:
        yield engine


def check_stages(policy: Policy, n: int, lo: int = 0, what: str = "K") -> None:
    """A policy's ``stages``: its ``k`` first, increasing, a later stage after layer ``max(k, 1)`` and below N."""
    stages = tuple(policy.stages)
    if not stages or stages[0] != policy.k:
        raise ArgumentError(f"{what}: a policy's first stage must be its layer k={policy.k}, got stages {stages}")
    later = stages[1:]
    if any(isinstance(s, bool) or not isinstance(s, int) for s in later) or any(
            b <= a for a, b in zip(stages, stages[1:])) or (later and (later[0] <= max(stages[0], 1)
                                                                      or later[-1] >= n)):
        raise ArgumentError(f"{what}: stages must be increasing layers in {max(lo, 1)}..{n - 1} (the second after "
                            f"layer 1), got {list(stages)}")


@contextlib.contextmanager
def active(model: nn.Module, engine: Engine, install: bool = True) -> Iterator[Engine]:
    """Install ``engine``'s hooks for the block; remove them on exit, also on error. Blocks do not nest within a
    thread; blocks of other threads on the same model are independent (each engine acts on its own thread's
    calls only)."""
    with _BLOCKS.enter(model, "withdraw()/fastv() is already active on this model in this thread; blocks do not "
                              "nest (leave the first block before entering another)") as thread:
        engine.thread = thread
        try:
            with compat.hook_guards():
                if install:
                    engine.install()
                yield engine
        finally:
            engine.remove()
