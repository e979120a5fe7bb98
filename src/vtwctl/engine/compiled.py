"""The compiled fast path: greedy VTW decoding over static KV buffers, one compiled graph per step.

The hooks of ``vtwctl.engine.hooks`` are general (any batch layout, any call) and Python-heavy, which is
what makes them correct everywhere and slow under ``torch.compile`` (dynamo breaks its graph at every
host read). Decoding does not need that generality: after the prefill, every step appends one text
token per row. So, as in gpt-fast:

1. **Prefill** runs once, eagerly, through the engine, into a static cache whose layers are sized
   per group: layers before K hold the whole prompt, layers K..N-1 only the kept (text) tokens, each
   plus ``max_new_tokens`` slots (rounded up to ``bucket``, so that similar prompts share a graph).
2. **Each decoding step** is one function of fixed-shape tensors: embed the token, rotary tables at the
   row's next position (original positions, "keep"), the stock decoder layers with one key mask per
   layer group, the final norm and the head, the argmax. The withdrawal is only in the masks: a
   ``[B, slots]`` map per group holds the original index of each cached key (-1: empty, padding,
   withdrawn), so the mask is ``map >= 0`` (and a sliding window measured in original indices).
   The step writes the new token's index into the maps in place, reads nothing on the host, and
   ``torch.compile(fullgraph=True)`` traces it whole.

``k == N`` runs the same code with every layer in the stock group: the stock model compiled the same
way, which is what the bench compares against (bench/compiled_decode.py). Families whose head or
positions differ from ``lm_head(norm(h))`` (then the scale or soft cap the model's forward applies,
``compat.logit_transform``) at ``max(prefill positions) + 1`` are refused
(``FAMILIES`` lists the verified ones; tests/test_compiled.py checks each against the engine and the
stock model). See docs/engine.md, "The compiled fast path".
"""

from __future__ import annotations

import inspect
import types
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ArgumentError, VTWError, check_k
from . import compat, plan
from .families import adapter_for, vision_mask
from .hooks import Engine, active
from .support import carries_visual, check_supported, num_layers

# verified against the engine and the stock model (tests/test_compiled.py); others are refused
FAMILIES = ("llava", "llava_next", "llava_onevision", "video_llava", "vipllava", "mistral3", "aya_vision",
            "gemma3", "idefics2", "idefics3", "smolvlm", "internvl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
            "cohere2_vision", "got_ocr2")
IMPLEMENTATIONS = ("eager", "sdpa")
MAX_SHAPES = 8  # compiled steps a decoder keeps (one per batch size and buffer sizes), least recently used dropped


def _round_up(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket


@dataclass
class Decoding:
    """The state of one greedy decoding: static buffers, advanced in place by each step."""

    cache: Any  # transformers Cache of StaticLayers, sized per layer group
    maps: dict  # group -> [B, slots] original index of each cached key, -1 where none may be attended
    n_full: torch.Tensor  # () next slot of the full-length layers (= the new token's original index)
    n_text: torch.Tensor  # () next slot of the compressed layers
    pos: torch.Tensor  # [B] the next token's rotary position
    token: torch.Tensor  # [B, 1] the token to feed next
    logits: torch.Tensor  # [B, V] float32, the logits that chose ``token`` (suppressed ids at -inf)
    steps_left: int
    prompt_len: int
    kept: int  # packed width of the compressed layers after prefill (0 without withdrawal)


class CompiledDecoder:
    """Greedy decoding with VTW at layer ``k`` and a compiled, static-shape decode step.

    ``compile=False`` runs the same step eagerly (useful to check it, and where no compiler works);
    ``backend``/``mode`` go to ``torch.compile`` (``mode="reduce-overhead"`` adds CUDA graphs on a GPU).
    """

    def __init__(self, model: nn.Module, k: int, *, compile: bool = True, backend: str = "inductor",
                 mode: str | None = None, bucket: int = 64, suppress_tokens: list[int] | tuple = ()):
        self.n = num_layers(model)
        check_k(k, self.n)
        adapter = adapter_for(model)
        if adapter.family not in FAMILIES:
            raise VTWError(f"the compiled decode path is verified for {', '.join(FAMILIES)}; "
                           f"{adapter.family} is not among them: use withdraw() with model.generate()")
        impl = compat.attn_implementation(model)
        if impl not in IMPLEMENTATIONS:
            raise VTWError(f"the compiled decode path supports attn_implementation {' or '.join(IMPLEMENTATIONS)}, "
                           f"not {impl!r}; load the model with one of those")
        if k < self.n:
            check_supported(model, k)
        else:
            compat.check_transformers()
        if bucket < 1:
            raise ArgumentError(f"bucket must be a positive number of slots, got {bucket}")
        self._model: Any = model  # decoder_for keeps a weak reference instead (see there)
        self.k, self.impl, self.bucket = k, impl, bucket
        self.adapter = adapter
        self.text = adapter.text_model(model)
        self.layers = list(self.text.layers)
        self.start = max(k, 1) if k < self.n else self.n
        # layer groups: "stock" sees every prompt token, "masked" (layer 0 at K = 0) the stock slots with the
        # withdrawn keys hidden, "text" the compressed cache of the kept tokens
        self.groups = ["stock" if i < k else "masked" if i < self.start else "text" for i in range(self.n)]
        self.types = compat.layer_types(model.config, self.n)
        window = compat.sliding_window(model.config)
        self.windows = [window if t == "sliding_attention" else None for t in self.types]
        self.embed = model.get_input_embeddings()
        self.head = model.get_output_embeddings()
        self.logit_transform = compat.logit_transform(model)
        self.cache_name = compat.cache_kwarg(self.layers[0].forward)
        self.model_cache_name = compat.cache_kwarg(model.forward)
        # the prefill computes the prompt's last logits only (not [B, S, V]) where the model can
        self.last_logits = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters \
            else {}
        self.rotary_typed = "layer_type" in inspect.signature(self.text.rotary_emb.forward).parameters
        self._collector = compat.output_collector()
        self._mrope = 0  # M-RoPE: number of position components (read from the prefill's position ids)
        vocab = self.head.out_features
        device = self.head.weight.device
        self.bias = torch.zeros(vocab, device=device)
        if suppress_tokens:
            self.bias[torch.tensor(list(suppress_tokens), device=device)] = float("-inf")
        self.compiled = compile
        self._compile = dict(backend=backend, mode=mode, fullgraph=True, dynamic=False)
        self._steps: OrderedDict = OrderedDict()  # (batch, buffer sizes) -> that shape's compiled step

    @property
    def model(self) -> nn.Module:
        model = self._model() if isinstance(self._model, weakref.ref) else self._model
        if model is None:
            raise RuntimeError("the model of this compiled decoder was freed")
        return model

    # -- prefill (eager, through the engine) ------------------------------------------------------------
    def _cache(self, full_slots: int, text_slots: int):
        from transformers.cache_utils import StaticCache, StaticLayer

        cache = StaticCache(config=compat.text_config(self.model.config), max_cache_len=full_slots)
        # plain static layers everywhere (no sliding ring buffers): slot i of a full layer is original index i
        cache.layers = [StaticLayer(max_cache_len=text_slots if g == "text" else full_slots) for g in self.groups]
        return cache

    def prefill(self, inputs: dict, max_new_tokens: int) -> Decoding:
        """Run the prompt (eagerly, VTW through the engine) into fresh static buffers; return the state."""
        if max_new_tokens < 1:
            raise ArgumentError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        impl = compat.attn_implementation(self.model)
        if impl != self.impl:
            raise VTWError(f"the model's attention implementation changed from {self.impl} to {impl} since this "
                           "decoder was built (its masks and graphs are for the old one): build a new decoder")
        ids = inputs.get("input_ids")
        if ids is None:
            raise VTWError("the compiled decode path needs input_ids")
        b, s = ids.shape
        valid = inputs.get("attention_mask")
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
        if not bool(valid[:, -1].all()):
            raise VTWError("the compiled decode path needs left padding (every row's last token real); "
                           "set processor.tokenizer.padding_side = 'left'")
        vision = vision_mask(ids, self.adapter.vision_token_ids(self.model.config), valid,
                             visual=carries_visual(inputs))
        kept = int((valid & ~vision).sum(1).max()) if self.start < self.n else 0
        full_slots = _round_up(s + max_new_tokens, self.bucket)
        text_slots = _round_up(kept + max_new_tokens, self.bucket)
        cache = self._cache(full_slots, text_slots)
        seen: dict = {}

        def grab(module, args, kwargs):
            seen.setdefault("pos", args[1] if len(args) > 1 else kwargs.get("position_ids"))

        hook = self.text.rotary_emb.register_forward_pre_hook(grab, with_kwargs=True)
        engine = Engine(self.model, self.k, "keep")
        try:
            with torch.no_grad(), active(self.model, engine, install=self.k < self.n):
                out = self.model(**inputs, **{self.model_cache_name: cache}, use_cache=True, **self.last_logits)
                stream = engine.streams.get(cache)
        finally:
            hook.remove()
        device = ids.device
        slot = torch.arange(full_slots, device=device)
        stock = torch.where(torch.cat([valid, valid.new_zeros(b, full_slots - s)], 1), slot, -1)
        maps = {"stock": stock}
        width = 0
        if self.start < self.n:
            width = stream.kv_map.shape[1]
            maps["text"] = _pad(stream.kv_map, text_slots)
            if self.k == 0:
                maps["masked"] = _pad(stream.full_map, full_slots)
        pos = seen["pos"]
        pos = pos.expand(b, s) if pos.ndim == 2 else pos.expand(pos.shape[0], b, s)
        nxt = (pos.amax(-1) if pos.ndim == 2 else pos.amax((0, -1))) + 1
        self._mrope = pos.shape[0] if pos.ndim == 3 else 0
        logits = out.logits[:, -1].float() + self.bias
        return Decoding(cache=cache, maps=maps, n_full=torch.tensor(s, device=device),
                        n_text=torch.tensor(width, device=device), pos=nxt.to(device).long(),
                        token=logits.argmax(-1, keepdim=True), logits=logits, steps_left=max_new_tokens - 1,
                        prompt_len=s, kept=width)

    # -- one decoding step (compiled) ---------------------------------------------------------------------
    def _decode_step(self, token, pos, n_full, n_text, maps: dict, cache):
        b = token.shape[0]
        tracing = self._collector is not None and torch.compiler.is_compiling()
        if tracing:  # the layers' output-capturing hooks (if any) read a plain global, None: inactive
            self._collector.set(None)
        hidden = self.embed(token)
        new = n_full.view(1, 1).expand(b, 1)  # the new token's original index
        for name, m in maps.items():
            m.index_copy_(1, (n_text if name == "text" else n_full).view(1), new)
        masks, tables = {}, {}
        position_ids = pos[:, None]
        rope_ids = position_ids[None].expand(self._mrope, b, 1) if self._mrope else position_ids
        self_slot = torch.zeros(1, dtype=torch.long, device=new.device)  # the one query is never a fill slot
        for i, layer in enumerate(self.layers):
            group, window, kind = self.groups[i], self.windows[i], self.types[i]
            if (group, window) not in masks:  # the engine's plan: causal and windowed by original index
                ok = plan.allowed_keys(maps[group], new, self_slot, window)  # [B, 1, 1, slots]
                masks[group, window] = compat.format_mask(ok, self.impl, hidden.dtype, False)
            if kind not in tables:
                extra = (kind,) if self.rotary_typed else ()
                tables[kind] = self.text.rotary_emb(hidden, rope_ids, *extra)
            out = layer(hidden, attention_mask=masks[group, window], position_embeddings=tables[kind],
                        position_ids=position_ids, use_cache=True, **{self.cache_name: cache})
            hidden = compat.output_hidden(out)
        if tracing:
            self._collector.reset(None)
        n_full.add_(1)
        n_text.add_(1)
        pos.add_(1)
        logits = self.head(self.text.norm(hidden)[:, -1]).float()
        logits = compat.apply_logit_transform(logits, self.logit_transform) + self.bias
        return logits.argmax(-1, keepdim=True), logits

    def _step_for(self, state: Decoding):
        """The compiled step for this state's shapes (batch size and buffer sizes).

        dynamo keeps its graphs per code object and refuses (under fullgraph) to compile one more than
        ``recompile_limit`` (8) times, so one code object for every shape would fail at the ninth prompt
        length. Each shape gets its own copy of the step's code, compiled once; the ``MAX_SHAPES`` most
        recently used are kept (an older shape compiles again when it comes back)."""
        if not self.compiled:
            return self._decode_step
        key = (state.token.shape[0], *sorted((name, m.shape[1]) for name, m in state.maps.items()))
        step = self._steps.pop(key, None)
        if step is None:
            step = torch.compile(_own_code(self._decode_step), **self._compile)
        self._steps[key] = step
        while len(self._steps) > MAX_SHAPES:
            self._steps.popitem(last=False)
        return step

    def step(self, state: Decoding) -> torch.Tensor:
        """Feed ``state.token``; returns (and stores) the next greedy token [B, 1]."""
        if state.steps_left < 1:
            raise VTWError("this decoding has produced its max_new_tokens; start a new one with prefill()")
        with torch.no_grad():
            token, logits = self._step_for(state)(state.token, state.pos, state.n_full, state.n_text, state.maps,
                                                  state.cache)
        # a compiled output may be a buffer the next call reuses (CUDA graphs)
        state.token, state.logits = (token.clone(), logits.clone()) if self.compiled else (token, logits)
        state.steps_left -= 1
        return state.token

    def generate(self, inputs: dict, max_new_tokens: int,
                 eos_token_id: int | list[int] | None = None) -> torch.Tensor:
        """Greedy tokens [B, <= max_new_tokens]: ``prefill`` then ``decode``."""
        return self.decode(self.prefill(inputs, max_new_tokens), eos_token_id)

    def decode(self, state: Decoding, eos_token_id: int | list[int] | None = None) -> torch.Tensor:
        """The prefill's token and every further step's, [B, <= 1 + steps left]. With ``eos_token_id`` (one id
        or several), a row that produced one repeats it, and the loop stops once every row has (one host read
        per step, only then)."""
        out = [state.token]
        eos = None if eos_token_id is None else torch.tensor(
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=state.token.device)
        done = None if eos is None else torch.isin(state.token[:, 0], eos)
        ended = None if eos is None else state.token[:, 0].clone()
        while state.steps_left > 0 and not (done is not None and bool(done.all())):
            tok = self.step(state)
            if done is not None:
                tok = torch.where(done[:, None], ended[:, None], tok)
                ended = torch.where(done, ended, tok[:, 0])
                done = done | torch.isin(tok[:, 0], eos)
            out.append(tok)
        return torch.cat(out, 1)


_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(k, attention impl): decoder}


def decoder_for(model: nn.Module, k: int) -> CompiledDecoder:
    """One compiled decoder per (model, k, attention implementation), so that later calls reuse its graphs.

    Kept in this module, not on the model (nothing is added to it): the decoder holds the model weakly and
    its modules strongly, and goes when the model does. A model whose attention implementation changed
    (``set_attn_implementation``) gets a new decoder: its masks and graphs differ."""
    per_model = _DECODERS.setdefault(model, {})
    key = (k, compat.attn_implementation(model))
    if key not in per_model:
        decoder = CompiledDecoder(model, k)
        decoder._model = weakref.ref(model)
        per_model[key] = decoder
    return per_model[key]


def _own_code(method):
    """``method`` bound to a private copy of its code object.

    dynamo keeps its compiled graphs per code object and refuses (under fullgraph) to compile one more than
    ``recompile_limit`` (8) times; every decoder instance, and every buffer shape, fails the guards of the
    others, so the ninth of a process would raise. A code object per (decoder, shape) gives each its own
    graph and limit.
    """
    fn = method.__func__
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(own, method.__self__)


def _pad(index_map: torch.Tensor, slots: int) -> torch.Tensor:
    """A [B, w] key map widened to ``slots`` with -1 (empty slots)."""
    b, w = index_map.shape
    return torch.cat([index_map.long(), index_map.new_full((b, slots - w), -1).long()], 1)

