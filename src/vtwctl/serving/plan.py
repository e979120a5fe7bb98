"""The text-only view of one vLLM step: which rows layers >= K run on, and where their KV goes.

vLLM packs every scheduled token of a step into one flat batch: request r owns rows
``query_start_loc[r]:query_start_loc[r+1]``, which are its tokens ``seq_len[r] - q_len[r] ..
seq_len[r] - 1``. VTW runs layers >= K on the text rows only. Their KV is stored in the request's
own blocks, at *text rank* ``c = t - V(t)`` instead of token index ``t`` (``V(t)``: vision tokens
of the request before ``t``). Since ``c <= t``, the blocks vLLM allocated for the full sequence
always hold them; layers < K keep the stock layout in the same blocks of their own KV tensors.

Between steps a request's vision count is kept in a ``VisionLedger`` keyed by the first block of
the request (stable for the request's life when prefix caching is off, and never shared). An
entry is reset whenever a request's step starts at token 0 (a new request, or one that was
preempted and is recomputed), and every continuing step is checked against the position where
the previous one ended, so a stale or foreign entry is an error, not a wrong answer.

Everything here is plain tensor code on the CPU; the vLLM side (``vllm_model``) builds the
attention metadata from a ``TextPlan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class LedgerError(RuntimeError):
    """The per-request vision counts do not match the step vLLM scheduled."""


@dataclass
class VisionLedger:
    """Vision tokens seen so far per request, keyed by the request's first KV block id."""

    entries: dict[int, tuple[int, int]] = field(default_factory=dict)  # key -> (next token index, vision count)

    def before(self, key: int, start: int) -> int:
        """Vision tokens of the request before token index ``start`` (its first token this step)."""
        if start == 0:
            return 0
        entry = self.entries.get(key)
        if entry is None:
            raise LedgerError(f"VTW: no vision count for the request in block {key} continuing at token {start}")
        nxt, vision = entry
        if nxt != start:
            raise LedgerError(f"VTW: the request in block {key} continues at token {start}, "
                              f"but its previous step ended at token {nxt}")
        return vision

    def record(self, key: int, end: int, vision: int) -> None:
        self.entries[key] = (end, vision)


@dataclass
class TextPlan:
    """Layers >= K of one step, restricted to text rows."""

    rows: torch.Tensor  # [Tt] indices into the step's rows (text rows of kept requests, in order)
    query_start_loc: torch.Tensor  # [Rt + 1] int32 over the text rows
    seq_lens: torch.Tensor  # [Rt] int32 text ranks seen so far, this step included
    requests: torch.Tensor  # [Rt] indices of the kept requests (those with at least one text row)
    slots: torch.Tensor  # [Tt] int64 KV slot of each text row, at its text rank
    text_ranks: torch.Tensor  # [Tt] text rank c = t - V(t) of each text row
    max_query_len: int
    max_seq_len: int

    @property
    def num_rows(self) -> int:
        return int(self.rows.numel())


def slots_for(block_table: torch.Tensor, request: torch.Tensor, index: torch.Tensor, block_size: int) -> torch.Tensor:
    """KV slots of token indices ``index`` [T] of requests ``request`` [T] under ``block_table`` [R, B]."""
    blocks = block_table[request.long(), (index // block_size).long()].long()
    return blocks * block_size + (index % block_size).long()


def plan_step(
    query_start_loc: torch.Tensor,  # [R + 1]
    seq_lens: torch.Tensor,  # [R]
    block_table: torch.Tensor,  # [R, B]
    vision: torch.Tensor,  # [T] bool, True for vision rows (T >= query_start_loc[-1]; rows past it are padding)
    block_size: int,
    ledger: VisionLedger,
) -> TextPlan:
    """Text rows, text-rank query/sequence lengths and KV slots of one step; updates ``ledger``."""
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    num_req = len(lens)
    vision = vision.to(torch.bool).cpu()
    if num_req and qsl[-1] == num_req and not bool(vision[:num_req].any()):
        return _decode_step(lens, block_table, block_size, ledger)
    rows, ranks, req_of_row, keep, text_q, text_s = [], [], [], [], [], []
    for r in range(num_req):
        lo, hi = qsl[r], qsl[r + 1]
        q_len = hi - lo
        if q_len == 0:
            continue
        start = lens[r] - q_len  # token index of the request's first row this step
        key = int(block_table[r, 0])
        v_before = ledger.before(key, start)
        vis = vision[lo:hi]
        cum = torch.cumsum(vis.to(torch.int64), 0)
        ledger.record(key, lens[r], v_before + int(cum[-1]))
        text = (~vis).nonzero().flatten()
        if text.numel() == 0:
            continue  # this chunk holds vision tokens only: nothing for layers >= K
        token_index = start + text
        rank = token_index - (v_before + cum[text] - vis[text].to(torch.int64))
        rows.append(lo + text)
        ranks.append(rank)
        req_of_row.append(torch.full_like(text, r))
        keep.append(r)
        text_q.append(int(text.numel()))
        text_s.append(int(rank[-1]) + 1)
    if not rows:
        empty = torch.zeros(0, dtype=torch.int64)
        return TextPlan(empty, torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), empty, empty,
                        empty, 0, 0)
    rows_t, ranks_t, req_t = torch.cat(rows), torch.cat(ranks), torch.cat(req_of_row)
    q = torch.tensor([0, *text_q], dtype=torch.int64).cumsum(0).to(torch.int32)
    return TextPlan(
        rows=rows_t,
        query_start_loc=q,
        seq_lens=torch.tensor(text_s, dtype=torch.int32),
        requests=torch.tensor(keep, dtype=torch.int64),
        slots=slots_for(block_table, req_t, ranks_t, block_size),
        text_ranks=ranks_t,
        max_query_len=max(text_q),
        max_seq_len=max(text_s),
    )


def _decode_step(lens: list[int], block_table: torch.Tensor, block_size: int, ledger: VisionLedger) -> TextPlan:
    """The common case, one text row per request (decode): the same plan without per-request tensors."""
    keys = block_table[:, 0].tolist()
    ranks = []
    for key, n in zip(keys, lens):
        v = ledger.before(int(key), n - 1)
        ledger.record(int(key), n, v)
        ranks.append(n - 1 - v)
    num_req = len(lens)
    ranks_t = torch.tensor(ranks, dtype=torch.int64)
    req = torch.arange(num_req)
    return TextPlan(
        rows=req, query_start_loc=torch.arange(num_req + 1, dtype=torch.int32),
        seq_lens=(ranks_t + 1).to(torch.int32), requests=req,
        slots=slots_for(block_table, req, ranks_t, block_size), text_ranks=ranks_t,
        max_query_len=1, max_seq_len=int(ranks_t.max()) + 1,
    )
