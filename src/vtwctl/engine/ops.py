"""The engine's tensor work for the layers >= K: what they get (mask, rotary tables, position ids) and
what leaves them (deepstack features, the stock layout, a policy's fill), as small functions of tensors.

Shapes: B rows, q tokens in the stock call, Qc compressed slots (``q_idx`` [B, Qc]: index into the
call's tokens, -1 for a fill slot), H hidden size, D rotary size. They build on ``vtwctl.engine.plan``;
the hooks (``vtwctl.engine.hooks``) call them once per call (``Call.once``) and hand the results to the
model's layers.
"""

from __future__ import annotations

import torch

from . import compat, plan


def full_queries(vision: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Masked layer (K = 0): every token of the call, withdrawn ones as -1 (they attend to themselves). [B, q]"""
    idx = torch.arange(vision.shape[1], device=vision.device).expand_as(vision)
    return torch.where(valid & ~vision, idx, torch.full_like(idx, -1))


def key_blocks(block: torch.Tensor | None, q_idx: torch.Tensor, old: torch.Tensor | None,
               old_map: torch.Tensor) -> torch.Tensor | None:
    """Bidirectional-block id of each key slot after this call (None when the family has none)."""
    if block is None and old is None:
        return None
    if block is None:
        block = torch.full(q_idx.shape, -1, dtype=torch.long, device=q_idx.device)
    chunk = torch.where(q_idx >= 0, plan.gather_seq(block.to(q_idx.device), q_idx, 1), -1)
    old = old if old is not None else torch.full_like(old_map, -1)
    return torch.cat([old.to(q_idx.device), chunk], 1)


def layer_mask(keys: torch.Tensor, q_idx: torch.Tensor, past: int, *, kv_length: int, kv_offset: int,
               window: int | None, block_map: torch.Tensor | None, impl: str, dtype: torch.dtype,
               causal_kernel: bool, device) -> object:
    """One layer's attention mask in transformers' form for ``impl``.

    ``keys`` [B, L] original index of each key slot after this call (its last ``Qc`` slots are the
    call's queries ``q_idx``), ``past`` the stock tokens before the call, ``kv_length``/``kv_offset``
    the slots the layer attends to (``compat.mask_sizes``), ``block_map`` [B, L] bidirectional blocks.
    Under sdpa a plain causal mask (no fill keys, no window or block) is left to sdpa's causal kernel,
    as transformers' own mask code does for the stock model (one host read of the keys).
    """
    qlen = q_idx.shape[1]
    past_slots = keys.shape[1] - qlen
    key_pos = plan.key_window(keys.to(device), kv_offset, kv_length)
    query_pos = plan.chunk_map(q_idx.to(device), past)
    self_slot = past_slots - kv_offset + torch.arange(qlen, device=device)
    blocks = {}
    if block_map is not None:
        blocks = dict(key_block=plan.key_window(block_map, kv_offset, kv_length), query_block=block_map[:, past_slots:])
    allowed = plan.allowed_keys(key_pos, query_pos, self_slot, window, **blocks)
    trivial = (impl == "sdpa" and window is None and not blocks and causal_kernel
               and (qlen == 1 or kv_length == qlen)
               and bool((key_pos >= 0).all() & (query_pos >= 0).all()))
    return compat.format_mask(allowed, impl, dtype, trivial, key_valid=key_pos >= 0)


def rearrange_shift(positions: torch.Tensor, selected: torch.Tensor, q_idx: torch.Tensor,
                    offset: torch.Tensor | None, pending: torch.Tensor | None):
    """``positions="rearrange"``: how far each compressed slot's position moves down, [B, Qc], from the
    stock position ids of the call ([B or 1, q], M-RoPE [3, B, q]) and the tokens withdrawn in it
    (``plan.rearrange_shift``); returns it with the stream's new ``offset`` and ``pending``."""
    pos = positions[0] if positions.ndim == 3 else positions  # M-RoPE: a text token has one id in all components
    b, q = selected.shape
    pos = pos.expand(b, q) if pos.shape[0] == 1 else pos
    total, offset, pending = plan.rearrange_shift(pos, selected.to(pos.device), offset, pending)
    return plan.gather_seq(total, q_idx, 1), offset, pending


def position_ids(value: torch.Tensor, q_idx: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """A layer's ``position_ids`` ([B, q] or [3, B, q]) gathered to the compressed slots, less ``shift``."""
    out = plan.gather_seq(value, q_idx, -1, -2)
    return out if shift is None else out - shift.to(out.device, out.dtype)


def rotary(value, q_idx: torch.Tensor):
    """``positions="keep"``: the stock rotary tables (cos, sin) [B, q, D] gathered to [B, Qc, D]."""
    return plan.map_tensors(value, lambda t: plan.gather_seq(t, q_idx, -2, -3))


def add_deepstack(hidden: torch.Tensor, masks: torch.Tensor, q_idx: torch.Tensor,
                  embeds: torch.Tensor) -> torch.Tensor:
    """Add a deepstack level's features ([number of vision tokens, H], in the order of ``masks`` [B, q], the
    stock vision positions) to the kept vision tokens of ``hidden`` [B, Qc, H] (none under VTW)."""
    masks = masks.to(hidden.device)
    rank = masks.flatten().long().cumsum(0).view_as(masks) - 1
    at = plan.gather_seq(masks, q_idx, 1) & (q_idx >= 0).to(hidden.device)
    if not bool(at.any()):
        return hidden
    rows = plan.gather_seq(rank, q_idx, 1)[at]
    hidden = hidden.clone()
    hidden[at] = hidden[at] + embeds.to(hidden.device, hidden.dtype)[rows]
    return hidden


def scatter(hidden: torch.Tensor, q_idx: torch.Tensor, q: int) -> torch.Tensor:
    """Compressed [B, Qc, H] back to the stock layout [B, q, H]; withdrawn positions are zero."""
    b = q_idx.shape[0]
    q_idx = q_idx.to(hidden.device)
    full = hidden.new_zeros(b, q, hidden.shape[-1])
    valid = q_idx >= 0
    rows = torch.arange(b, device=hidden.device)[:, None].expand_as(q_idx)
    full[rows[valid], q_idx[valid]] = hidden[valid]
    return full


def last_kept(full: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """[B, q, H] with each position's hidden state replaced by the last kept position's at or before it
    (a policy's ``fill = "last_kept"``: what a shortened sequence gives)."""
    b, q = kept.shape
    idx = torch.arange(q, device=full.device).expand(b, q)
    last = torch.where(kept, idx, torch.full_like(idx, -1)).cummax(1).values.clamp(min=0)
    return full.gather(1, last[..., None].expand(-1, -1, full.shape[-1]))
