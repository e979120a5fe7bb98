"""The text-only view of one vLLM step: which rows layers >= K run on, and where their KV goes.

vLLM packs every scheduled token of a step into one flat batch: request r owns rows
``query_start_loc[r]:query_start_loc[r+1]``, which are its tokens ``seq_len[r] - q_len[r] ..
seq_len[r] - 1``. VTW runs layers >= K on the text rows only. Their KV lives in a KV-cache group of
its own whose blocks hold a request's *text* tokens only: text token ``t`` is stored at *text rank*
``c = t - V(t)`` (``V(t)``: vision tokens of the request before ``t``), so a request needs
``ceil(T / block_size)`` blocks there for its T text tokens (``VisionLayout`` counts them for vLLM's
scheduler), while layers < K keep the stock layout, one slot per token.

Between steps a request's vision count is kept in a ``VisionLedger`` keyed by the request's first
block in the text group (stable for the request's life with prefix caching off, and never shared;
the text group always gives a request at least one block). An entry is reset whenever a request's
step starts at token 0 (a new request, or one that was preempted and is recomputed), and every
continuing step is checked against the position where the previous one ended, so a stale or
foreign entry is an error, not a wrong answer.

Everything here is plain tensor code on the CPU; ``model`` turns a ``TextPlan`` into the
attention metadata of vLLM's backend, and ``kv`` uses ``VisionLayout`` in vLLM's KV-cache manager.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch


class LedgerError(RuntimeError):
    """The per-request vision counts do not match the step vLLM scheduled."""


@dataclass
class VisionLedger:
    """Vision tokens seen so far per request, keyed by the request's first text-group block id."""

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


@dataclass(frozen=True)
class VisionLayout:
    """The token indices of one request that are vision tokens, as sorted runs ``[start, end)``."""

    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    cumulative: tuple[int, ...] = ()  # vision tokens in the runs before run i

    @classmethod
    def from_runs(cls, runs: Iterable[tuple[int, int]]) -> VisionLayout:
        merged: list[list[int]] = []
        for start, end in sorted((int(s), int(e)) for s, e in runs if e > s):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        cumulative, total = [], 0
        for start, end in merged:
            cumulative.append(total)
            total += end - start
        return cls(tuple(s for s, _ in merged), tuple(e for _, e in merged), tuple(cumulative))

    @classmethod
    def from_placeholders(cls, placeholders: Iterable[tuple[int, int, Sequence[bool] | None]]) -> VisionLayout:
        """From ``(offset, length, is_embed)`` per item (``is_embed`` None: every position is a vision row)."""
        runs = []
        for offset, length, is_embed in placeholders:
            if is_embed is None:
                runs.append((offset, offset + length))
                continue
            flags = [bool(x) for x in is_embed]
            i = 0
            while i < len(flags):
                if flags[i]:
                    j = i
                    while j < len(flags) and flags[j]:
                        j += 1
                    runs.append((offset + i, offset + j))
                    i = j
                else:
                    i += 1
        return cls.from_runs(runs)

    def vision_before(self, n: int) -> int:
        """Vision tokens among token indices ``0 .. n-1``."""
        i = bisect.bisect_right(self.starts, n - 1) - 1
        if i < 0:
            return 0
        return self.cumulative[i] + min(n, self.ends[i]) - self.starts[i]

    def text_tokens(self, n: int) -> int:
        return n - self.vision_before(n)


@dataclass
class TextPlan:
    """Layers >= K of one step, restricted to text rows."""

    rows: torch.Tensor  # [Tt] indices into the step's rows (text rows of kept requests, in order)
    row_requests: torch.Tensor  # [Tt] index of each text row's request in the step
    query_start_loc: torch.Tensor  # [Rt + 1] int32 over the text rows
    seq_lens: torch.Tensor  # [Rt] int32 text ranks seen so far, this step included
    requests: torch.Tensor  # [Rt] indices of the kept requests (those with at least one text row)
    text_ranks: torch.Tensor  # [Tt] text rank c = t - V(t) of each text row
    max_query_len: int
    max_seq_len: int
    all_rows: bool = False  # every row of the step is a text row (rows == 0..T-1): nothing to select

    @property
    def num_rows(self) -> int:
        return int(self.rows.numel())

    def slots(self, block_table: torch.Tensor, block_size: int) -> torch.Tensor:
        """KV slot of each text row at its text rank under one group's ``block_table`` [R, B]."""
        return slots_for(block_table, self.row_requests, self.text_ranks, block_size)


def slots_for(block_table: torch.Tensor, request: torch.Tensor, index: torch.Tensor, block_size: int) -> torch.Tensor:
    """KV slots of token indices ``index`` [T] of requests ``request`` [T] under ``block_table`` [R, B]."""
    device = block_table.device
    request, index = request.to(device).long(), index.to(device).long()
    blocks = block_table[request, index // block_size].long()
    return blocks * block_size + index % block_size


def _empty() -> TextPlan:
    empty = torch.zeros(0, dtype=torch.int64)
    return TextPlan(empty, empty, torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), empty, empty,
                    0, 0)


def plan_step(
    query_start_loc: torch.Tensor | Sequence[int],  # [R + 1]
    seq_lens: torch.Tensor | Sequence[int],  # [R]
    keys: torch.Tensor | Sequence[int],  # [R] each request's ledger key (its first text-group block)
    vision: torch.Tensor | None,  # [T] bool, True for vision rows (rows past the last are padding); None: none
    ledger: VisionLedger,
) -> TextPlan:
    """Text rows, their text ranks and the text-rank query/sequence lengths of one step; updates ``ledger``."""
    qsl = query_start_loc.tolist() if isinstance(query_start_loc, torch.Tensor) else list(query_start_loc)
    lens = seq_lens.tolist() if isinstance(seq_lens, torch.Tensor) else list(seq_lens)
    keys = keys.tolist() if isinstance(keys, torch.Tensor) else list(keys)
    vision = None if vision is None else vision.to(torch.bool).cpu()
    if vision is None or not bool(vision[:qsl[-1]].any()):
        return _all_text(qsl, lens, keys, ledger)
    rows, ranks, req_of_row, keep, text_q, text_s = [], [], [], [], [], []
    for r in range(len(lens)):
        lo, hi = qsl[r], qsl[r + 1]
        q_len = hi - lo
        if q_len == 0:
            continue
        start = lens[r] - q_len  # token index of the request's first row this step
        v_before = ledger.before(int(keys[r]), start)
        vis = vision[lo:hi]
        cum = torch.cumsum(vis.to(torch.int64), 0)
        ledger.record(int(keys[r]), lens[r], v_before + int(cum[-1]))
        text = (~vis).nonzero().flatten()
        if text.numel() == 0:
            continue  # this chunk holds vision tokens only: nothing for layers >= K
        rank = start + text - (v_before + cum[text] - vis[text].to(torch.int64))
        rows.append(lo + text)
        ranks.append(rank)
        req_of_row.append(torch.full_like(text, r))
        keep.append(r)
        text_q.append(int(text.numel()))
        text_s.append(int(rank[-1]) + 1)
    if not rows:
        return _empty()
    return TextPlan(
        rows=torch.cat(rows),
        row_requests=torch.cat(req_of_row),
        query_start_loc=torch.tensor([0, *text_q], dtype=torch.int64).cumsum(0).to(torch.int32),
        seq_lens=torch.tensor(text_s, dtype=torch.int32),
        requests=torch.tensor(keep, dtype=torch.int64),
        text_ranks=torch.cat(ranks),
        max_query_len=max(text_q),
        max_seq_len=max(text_s),
    )


def _all_text(qsl: list[int], lens: list[int], keys: list[int], ledger: VisionLedger) -> TextPlan:
    """A step without vision rows (decode, or a prompt's text after its images): every row goes on.

    One ledger lookup per request, then tensor code (this is the hot path of decoding)."""
    q_lens = [hi - lo for lo, hi in zip(qsl[:-1], qsl[1:])]
    keep, vis = [], []
    for r, (key, n, q) in enumerate(zip(keys, lens, q_lens)):
        if q == 0:
            continue
        v = ledger.before(int(key), n - q)
        ledger.record(int(key), n, v)
        keep.append(r)
        vis.append(v)
    if not keep:
        return _empty()
    q_kept = torch.tensor([q_lens[r] for r in keep], dtype=torch.int64)
    text_lens = torch.tensor([lens[r] for r in keep], dtype=torch.int64) - torch.tensor(vis, dtype=torch.int64)
    requests = torch.tensor(keep, dtype=torch.int64)
    num = int(qsl[-1])
    row_req_local = torch.repeat_interleave(torch.arange(len(keep)), q_kept)
    starts = torch.tensor([0, *q_kept.tolist()], dtype=torch.int64).cumsum(0)
    within = torch.arange(num) - starts[:-1][row_req_local]
    ranks = (text_lens - q_kept)[row_req_local] + within
    return TextPlan(
        rows=torch.arange(num), row_requests=requests[row_req_local], query_start_loc=starts.to(torch.int32),
        seq_lens=text_lens.to(torch.int32), requests=requests, text_ranks=ranks,
        max_query_len=int(q_kept.max()), max_seq_len=int(text_lens.max()), all_rows=True,
    )
