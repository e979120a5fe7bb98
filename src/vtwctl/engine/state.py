"""What the engine remembers: per KV cache (``Stream``, kept by ``Streams``) and per forward call (``Call``).

A stream maps each key slot of a cache to its original index (the index of the token in the stock
sequence, which causality and sliding windows are measured in; -1 for a fill slot, or a withdrawn key
of K = 0's masked layer 0), per stage of the policy (the layers of one stage cache the same tokens), and
carries what a decoding step must know of the calls before it. A call holds the plan of one forward call,
built at the multimodal model's entry and at each stage's first layer, and what every layer >= K reuses.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from . import compat

_PER_STAGE = ("kv_maps", "kv_blocks", "offsets", "pendings")


@dataclass
class Stream:
    """Withdrawal bookkeeping for one sequence batch (one KV cache, or one cache-less call).

    The ``*s`` lists hold one entry per stage of the policy (one for a single-stage policy): the layers
    of stage j (``stages[j] <= layer < stages[j + 1]``) cache the tokens kept through stage j."""

    kv_maps: list  # per stage: [B, Lc] original index of each compressed key slot, -1 for fill
    full_map: torch.Tensor  # [B, L] original index of each stock key slot, -1 if withdrawn (K = 0's layer 0)
    full_len: int = 0  # stock sequence length seen so far
    kv_blocks: list = field(default_factory=list)  # per stage: [B, Lc] bidirectional block (-1: none) or None
    full_block: torch.Tensor | None = None  # [B, L] the same per stock slot
    offsets: list = field(default_factory=list)  # per stage: [B] rearrange: shift of the latest text token
    pendings: list = field(default_factory=list)  # per stage: [B] rearrange: start of a withdrawn run at the end

    @classmethod
    def empty(cls, b: int, device, stages: int = 1) -> Stream:
        none = torch.empty(b, 0, dtype=torch.long, device=device)
        return cls(kv_maps=[none] * stages, full_map=none, kv_blocks=[None] * stages, offsets=[None] * stages,
                   pendings=[None] * stages)

    @property
    def kv_map(self) -> torch.Tensor:
        """The first stage's key slots (a single-stage policy's only ones)."""
        return self.kv_maps[0]

    def repeat_rows(self, b: int) -> None:
        """Beam search / batch expansion after prefill: each row's bookkeeping repeated to ``b`` rows."""
        rep = b // self.full_map.shape[0]
        for name in ("full_map", "full_block"):
            val = getattr(self, name)
            if val is not None:
                setattr(self, name, val.repeat_interleave(rep, 0))
        for name in _PER_STAGE:
            setattr(self, name, [None if v is None else v.repeat_interleave(rep, 0) for v in getattr(self, name)])

    def commit(self, call: Call) -> None:
        """The key slots after ``call`` (which ran to its end on this stream's cache)."""
        for j, stage in enumerate(call.stages):
            self.kv_maps[j], self.kv_blocks[j] = stage.kv_map, stage.kv_block
        if call.full_map is not None:
            self.full_map, self.full_block = call.full_map, call.full_block
        self.full_len = call.past + call.vision.shape[1]


class Streams:
    """The stream of each KV cache, held weakly (a cache that is dropped drops its bookkeeping)."""

    def __init__(self, stages: int = 1) -> None:
        self._of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.stages = stages

    def __getitem__(self, cache) -> Stream:
        return self._of[cache]

    def get(self, cache, default: Stream | None = None) -> Stream | None:
        return self._of.get(cache, default)

    def adopt(self, cache, stream: Stream) -> None:
        """A cache the language model created inside a call continues that call's stream."""
        self._of[cache] = stream

    def for_call(self, cache, b: int, device) -> Stream:
        """The stream a call of ``b`` rows continues: a fresh one for no cache or an empty cache; refused
        for a cache filled outside the engine (its stock length is not the stream's)."""
        if cache is None:
            return Stream.empty(b, device, self.stages)
        stream = self._of.get(cache)
        seen = compat.cached_tokens(cache, 0)  # layer 0 is never compressed: the stock length
        if stream is None and seen == 0:
            stream = self._of[cache] = Stream.empty(b, device, self.stages)
        if stream is None or stream.full_len != seen:
            raise RuntimeError("withdraw: this KV cache was filled outside the withdraw() block (or edited); "
                               "start generation inside the block")
        if stream.full_map.shape[0] != b:
            stream.repeat_rows(b)
        return stream


@dataclass
class Stage:
    """One stage's plan in a call: which of the call's tokens its layers run on and the key slots they cache."""

    q_idx: torch.Tensor  # [B, Qc] index into the call's tokens, -1 for fill
    kv_map: torch.Tensor  # [B, Lc] original index of each key slot of this stage's layers after this call
    kv_block: torch.Tensor | None  # [B, Lc] bidirectional block of each key slot (None: the family has none)
    withdrawn: torch.Tensor  # [B, q] tokens of the call withdrawn at this stage or an earlier one


@dataclass
class Call:
    """One forward call's plan, built at the multimodal model's entry and at each stage's first layer."""

    vision: torch.Tensor  # [B, q] vision tokens of a visual call (VTW's candidates)
    valid: torch.Tensor  # [B, q] not padding
    past: int  # stock tokens before this call
    stream: Stream
    cache: Any = None
    visual: bool = False
    block: torch.Tensor | None = None  # [B, q] bidirectional block ids (PaliGemma, Gemma 3), -1 outside
    stages: list = field(default_factory=list)  # the ``Stage`` plans made so far, in order
    full_map: torch.Tensor | None = None  # [B, L] stock key slots after this call (masked layer)
    full_block: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # stock rotary position ids (from the rotary hook)
    deep: tuple | None = None  # deepstack: (visual_pos_masks, embeds of layers >= start)
    compressed: dict = field(default_factory=dict)  # id of a compressed layer output -> its stage
    derived: dict = field(default_factory=dict)  # what every layer >= K reuses: (what, *key) -> value

    @property
    def q_idx(self) -> torch.Tensor | None:
        """The last planned stage's slots (the layout the language model's output leaves in)."""
        return self.stages[-1].q_idx if self.stages else None

    @property
    def selected(self) -> torch.Tensor | None:
        """[B, q] every token of the call withdrawn so far (vision for VTW)."""
        return self.stages[-1].withdrawn if self.stages else None

    def once(self, key: tuple, fn):
        """``fn()`` computed once per call for ``key``: every layer >= K gets the same gathered tensors."""
        if key not in self.derived:
            self.derived[key] = fn()
        return self.derived[key]
