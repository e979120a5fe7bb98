"""Table 2's rows as selection policies over one engine: which tokens leave before layer K.

* ``stock``      nothing leaves (the stock model; ``--no-withdraw``).
* ``vtw``        every vision token leaves at K (the paper's method).
* ``vtw-random`` VTW at a random layer K per sample ("VTW†": K = Random[K-8, K+8] in Table 2),
  drawn from a seed and the sample's id, so a run is reproducible and a resume draws the same K.
* ``rand``       as many *randomly chosen* input tokens as there are vision tokens leave at K
  ("Rand": drawn among every token of the prompt, text included, as the authors' code draws them),
  seeded per sample. Where the last prompt token is drawn, the next token is predicted from the last
  kept one (the authors' code shortens the sequence, so its last hidden state is the last kept
  token's); withdrawn positions get that state, not zeros.
* ``fastv``      FastV's attention-ranked vision tokens (``fastv.py``), at its own K (2 by default).

Each is a context manager over a stock model (``context``), the engine never learns which policy
it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .errors import check_k
from .spec import METHOD_ALIASES as ALIASES  # noqa: F401  (re-exported)
from .spec import METHODS, canonical, runs_stock  # noqa: F401  (re-exported)
from .withdraw import Engine, active, num_layers

RANDOM_K_SPAN = 8  # Table 2: VTW† at Random[8, 24] around K = 16 (7B), Random[12, 28] around K = 20 (13B)


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed: the same sample gets the same draw in every run, batch and shard."""
    return int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest(), 16) % 2**31


def random_k(seed: int, sample_id: str, k: int, num_layers: int, span: int = RANDOM_K_SPAN) -> int:
    """VTW†'s layer for one sample: uniform in [k - span, k + span] (inclusive, clipped to 0..N)."""
    lo, hi = max(0, k - span), min(num_layers, k + span)
    return random.Random(sample_seed(seed, sample_id)).randint(lo, hi)


class RandEngine(Engine):
    """Withdraw, at layer k, as many random tokens of each row's prompt as the row has vision tokens."""

    def __init__(self, model: nn.Module, k: int, seeds: Sequence[int], positions: str = "keep"):
        super().__init__(model, k, positions)
        self.seeds = list(seeds)
        self.dropped: list[torch.Tensor] = []  # per prefill call: the drop mask [B, q] (for tests, records)

    def select(self, call, hidden):
        vision = call.vision
        if not bool(vision.any()):
            return vision  # decode steps, text-only calls: nothing to draw
        b, q = vision.shape
        if len(self.seeds) != b:
            raise ValueError(f"rand: {len(self.seeds)} seeds for a batch of {b} rows")
        valid = call.valid.to(vision.device)  # padding is never drawn
        drop = torch.zeros_like(vision)
        for row in range(b):
            n = int(vision[row].sum())
            candidates = valid[row].nonzero().squeeze(1).tolist()
            picked = random.Random(self.seeds[row]).sample(candidates, min(n, len(candidates)))
            drop[row, picked] = True
        self.dropped.append(drop.cpu())
        return drop

    def _on_text_out(self, module, args, kwargs, output):
        call = self.call
        output = super()._on_text_out(module, args, kwargs, output)
        if call is None or call.q_idx is None or not bool(call.vision.any()):
            return output
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        kept = ~call.selected.to(hidden.device) & call.valid.to(hidden.device)
        b, q = kept.shape
        idx = torch.arange(q, device=hidden.device).expand(b, q)
        last_kept = torch.where(kept, idx, torch.full_like(idx, -1)).cummax(1).values.clamp(min=0)
        filled = hidden.gather(1, last_kept[..., None].expand(-1, -1, hidden.shape[-1]))
        if isinstance(output, tuple):
            return (filled, *output[1:])
        output.last_hidden_state = filled
        return output


@contextlib.contextmanager
def rand_drop(model: nn.Module, k: int, seeds: Sequence[int], positions: str = "keep") -> Iterator[RandEngine]:
    """Rand inside the block: one seed per batch row."""
    n = num_layers(model)
    check_k(k, n)
    engine = RandEngine(model, k, seeds, positions)
    with active(model, engine, install=k < n):
        yield engine


def context(model: nn.Module, method: str, k: int | None = None, positions: str = "keep", fastv_k: int = 2,
            fastv_ratio: float = 0.5, seeds: Sequence[int] | None = None):
    """The context manager that makes ``model`` run ``method`` (``vtw-random`` takes its drawn ``k``)."""
    method = canonical(method)
    n = num_layers(model)
    if runs_stock(method, k, n):
        return contextlib.nullcontext(model)
    if method in ("vtw", "vtw-random"):
        from .withdraw import withdraw

        return withdraw(model, k, positions)
    if method == "fastv":
        from .fastv import fastv

        return fastv(model, fastv_k, fastv_ratio)
    if seeds is None:
        raise ValueError("rand needs one seed per batch row")
    return rand_drop(model, n if k is None else k, seeds, positions)
