"""What the engine remembers: per KV cache (``Stream``, kept by ``Streams``) and per forward call (``Call``).

A stream maps each key slot of a cache to its original index (the index of the token in the stock
sequence, which causality and sliding windows are measured in; -1 for a fill slot, or a withdrawn key
of K = 0's masked layer 0), and carries what a decoding step must know of the calls before it. A call
holds the plan of one forward call, built at the multimodal model's entry and at layer K, and what
every layer >= K reuses.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from . import compat


@dataclass
class Stream:
    """Withdrawal bookkeeping for one sequence batch (one KV cache, or one cache-less call)."""

    kv_map: torch.Tensor  # [B, Lc] original index of each compressed key slot, -1 for fill
    full_map: torch.Tensor  # [B, L] original index of each stock key slot, -1 if withdrawn (K = 0's layer 0)
    full_len: int = 0  # stock sequence length seen so far
    kv_block: torch.Tensor | None = None  # [B, Lc] bidirectional block of each compressed slot (-1: none)
    full_block: torch.Tensor | None = None  # [B, L] the same per stock slot
    offset: torch.Tensor | None = None  # [B] rearrange: position shift of the latest text token
    pending: torch.Tensor | None = None  # [B] rearrange: start position of a withdrawn run at the end

    @classmethod
    def empty(cls, b: int, device) -> Stream:
        none = torch.empty(b, 0, dtype=torch.long, device=device)
        return cls(kv_map=none, full_map=none)

    def repeat_rows(self, b: int) -> None:
        """Beam search / batch expansion after prefill: each row's bookkeeping repeated to ``b`` rows."""
        rep = b // self.kv_map.shape[0]
        for name in ("kv_map", "full_map", "kv_block", "full_block", "offset", "pending"):
            val = getattr(self, name)
            if val is not None:
                setattr(self, name, val.repeat_interleave(rep, 0))

    def commit(self, call: Call) -> None:
        """The key slots after ``call`` (which ran to its end on this stream's cache)."""
        if call.kv_map is not None:
            self.kv_map, self.kv_block = call.kv_map, call.kv_block
        if call.full_map is not None:
            self.full_map, self.full_block = call.full_map, call.full_block
        self.full_len = call.past + call.vision.shape[1]


class Streams:
    """The stream of each KV cache, held weakly (a cache that is dropped drops its bookkeeping)."""

    def __init__(self) -> None:
        self._of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

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
            return Stream.empty(b, device)
        stream = self._of.get(cache)
        seen = compat.cached_tokens(cache, 0)  # layer 0 is never compressed: the stock length
        if stream is None and seen == 0:
            stream = self._of[cache] = Stream.empty(b, device)
        if stream is None or stream.full_len != seen:
            raise RuntimeError("withdraw: this KV cache was filled outside the withdraw() block (or edited); "
                               "start generation inside the block")
        if stream.kv_map.shape[0] != b:
            stream.repeat_rows(b)
        return stream


@dataclass
class Call:
    """One forward call's plan, built at the multimodal model's entry and at layer K."""

    vision: torch.Tensor  # [B, q] vision tokens of a visual call (VTW's candidates)
    valid: torch.Tensor  # [B, q] not padding
    past: int  # stock tokens before this call
    stream: Stream
    cache: Any = None
    visual: bool = False
    block: torch.Tensor | None = None  # [B, q] bidirectional block ids (PaliGemma, Gemma 3), -1 outside
    q_idx: torch.Tensor | None = None  # [B, Qc] index into the call's tokens, -1 for fill
    selected: torch.Tensor | None = None  # [B, q] tokens the policy withdrew (vision for VTW)
    kv_map: torch.Tensor | None = None  # [B, Lc] compressed key slots after this call
    full_map: torch.Tensor | None = None  # [B, L] stock key slots after this call (masked layer)
    kv_block: torch.Tensor | None = None
    full_block: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # stock rotary position ids (from the rotary hook)
    deep: tuple | None = None  # deepstack: (visual_pos_masks, embeds of layers >= start)
    compressed: set = field(default_factory=set)  # ids of compressed layer outputs
    derived: dict = field(default_factory=dict)  # what every layer >= K reuses: (what, *key) -> value

    def once(self, key: tuple, fn):
        """``fn()`` computed once per call for ``key``: every layer >= K gets the same gathered tensors."""
        if key not in self.derived:
            self.derived[key] = fn()
        return self.derived[key]
