"""The withdrawal plan as pure tensor functions: packing, key maps, attention masks, position shifts.

Shapes: B batch rows, q tokens in the stock call, Qc compressed slots, W keys a layer attends to.
"Original index" is a token's index in the stock sequence (prompt and generated tokens, padding
included), which is what causality and sliding windows are measured in; -1 marks a fill slot.
The engine (``vtwctl.engine.hooks``) only wires these to the model's hooks.
"""

from __future__ import annotations

import torch


def gather_seq(x: torch.Tensor, idx: torch.Tensor, dim: int, bdim: int = 0) -> torch.Tensor:
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


def pack(keep: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Right-aligned packing of the kept tokens: [B, q] bool -> q_idx [B, Qc], -1 for fill.

    Slot j of row r holds the (j - (Qc - n_r))-th kept token of the row, in order, so every row's
    last slot is its last kept token. ``Qc`` is ``width`` or the largest kept count (at least 1;
    reading it syncs with the device).
    """
    b, q = keep.shape
    n_keep = keep.sum(1)
    qc = width if width is not None else max(int(n_keep.max()), 1)
    order = torch.arange(q, device=keep.device).expand(b, q)
    kept_pos = torch.where(keep, order, q + order).sort(1).values  # kept tokens first, in order
    if qc > q:
        kept_pos = torch.cat([kept_pos, kept_pos.new_full((b, qc - q), 2 * q)], 1)
    kept_pos = kept_pos[:, :qc]
    src = torch.arange(qc, device=keep.device).expand(b, qc) - (qc - n_keep)[:, None]
    return torch.where(src >= 0, kept_pos.gather(1, src.clamp(min=0)), torch.full_like(src, -1))


def chunk_map(q_idx: torch.Tensor, past: int) -> torch.Tensor:
    """Original index of each compressed slot of a call that starts at stock index ``past``."""
    return torch.where(q_idx >= 0, q_idx + past, torch.full_like(q_idx, -1))


def key_window(kv_map: torch.Tensor, offset: int, length: int) -> torch.Tensor:
    """The original index of each key slot a layer attends to: ``kv_map[:, offset:offset+length]``.

    Slots past the written ones (a static cache's free tail) are -1.
    """
    keys = kv_map[:, offset : offset + length]
    if keys.shape[1] < length:
        keys = torch.cat([keys, keys.new_full((keys.shape[0], length - keys.shape[1]), -1)], 1)
    return keys


def allowed_keys(key_pos: torch.Tensor, query_pos: torch.Tensor, self_slot: torch.Tensor,
                 window: int | None = None, key_block: torch.Tensor | None = None,
                 query_block: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 1, Qc, W] True where query slot i may attend key slot j.

    Causal by original index (``key_pos <= query_pos``) or inside one bidirectional block
    (``key_block == query_block >= 0``: PaliGemma's prefix, Gemma 3's images), never to fill keys
    (-1), and within ``window`` (``query_pos - key_pos < window``) where the layer has one. A fill
    query (-1) attends to its own slot ``self_slot[i]`` only, so that no softmax row is empty.
    """
    k, qp = key_pos[:, None, :], query_pos[:, :, None]
    allowed = k <= qp
    if key_block is not None and query_block is not None:
        qb, kb = query_block[:, :, None], key_block[:, None, :]
        allowed |= (qb >= 0) & (qb == kb)
    allowed &= k >= 0
    if window is not None:
        allowed &= (qp - k) < window
    fill = query_pos < 0
    allowed &= ~fill[:, :, None]
    own = torch.zeros_like(allowed)
    slots = torch.arange(query_pos.shape[1], device=allowed.device)
    own[:, slots, self_slot.to(allowed.device)] = True
    allowed |= own & fill[:, :, None]
    return allowed[:, None]


def rearrange_shift(pos: torch.Tensor, withdrawn: torch.Tensor, offset: torch.Tensor | None,
                    pending: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """"Rearrange" positions: how far each token's position moves down, and the carried state.

    ``pos`` [B, q] are the stock positions of one call, ``withdrawn`` [B, q] its withdrawn tokens.
    A text token right after a run of withdrawn tokens takes the position of the run's first token;
    every later token moves down by the same amount. ``offset`` [B] is the shift accumulated by
    earlier calls, ``pending`` [B] the start position of a withdrawn run that ended the previous
    call (-1: none). Returns (shift [B, q], new offset, new pending).
    """
    b, q = withdrawn.shape
    idx = torch.arange(q, device=pos.device).expand(b, q)
    prev = torch.cat([withdrawn.new_zeros(b, 1), withdrawn[:, :-1]], 1)
    run_start = withdrawn & ~prev  # first token of each withdrawn run
    start_idx = torch.where(run_start, idx, torch.full_like(idx, -1)).cummax(1).values
    start_pos = pos.gather(1, start_idx.clamp(min=0))
    ends_run = ~withdrawn & prev & (start_idx >= 0)
    gap = torch.where(ends_run, pos - start_pos, torch.zeros_like(pos))
    if pending is not None:  # a withdrawn run that ended the previous call
        first = ~withdrawn[:, 0] & (pending >= 0)
        gap[:, 0] += torch.where(first, pos[:, 0] - pending, torch.zeros_like(pending))
    base = offset if offset is not None else torch.zeros(b, dtype=pos.dtype, device=pos.device)
    total = base[:, None] + gap.cumsum(1)
    last_run = torch.where(withdrawn[:, -1], start_pos[:, -1], torch.full_like(base, -1))
    carried = pending if pending is not None else torch.full_like(base, -1)
    new_pending = torch.where(withdrawn.all(1), carried, last_run)
    return total, total[:, -1], new_pending


def map_tensors(value, fn):
    """``fn`` applied to every tensor of a tensor, tuple or list (rotary tables: (cos, sin))."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    return value
