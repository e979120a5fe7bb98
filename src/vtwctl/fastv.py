"""FastV (Chen et al., 2024) as the comparison row, on the same engine as VTW.

At layer ``k`` (default 2: layers 0..k-1 see everything) FastV drops the fraction ``ratio`` of the
vision tokens that receive the least attention from the last prompt token at layer ``k - 1``
(averaged over heads); layers >= k see the text tokens and the kept vision tokens. The attention row
is computed here from the query of the last token and the keys (``q . k`` with the model's own
projections and rotary embedding), so FastV works with sdpa and flash attention, not only eager.
As with VTW, layers >= k cache only the kept tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from . import compat
from .attention import last_query_attention, project, rotate
from .errors import ArgumentError, check_k
from .withdraw import Engine, active, check_supported, num_layers


def last_token_attention(attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         mask: torch.Tensor | None) -> torch.Tensor:
    """Head-averaged attention of the last query over all keys of one attention module: [B, S].

    ``hidden`` is the attention input (after the input layer norm), ``cos``/``sin`` [B, S, D] the
    rotary tables the layer receives, ``mask`` the layer's 4D mask or None (plain causal).
    """
    keys = rotate(project(attn, "k", hidden), cos, sin)
    row = mask[:, :, -1:, :] if isinstance(mask, torch.Tensor) and mask.ndim == 4 else None
    return last_query_attention(attn, hidden[:, -1:], cos[:, -1:], sin[:, -1:], keys, row)


class FastVEngine(Engine):
    def __init__(self, model: nn.Module, k: int, ratio: float):
        super().__init__(model, k, "keep")
        self.ratio = ratio
        self.scores: torch.Tensor | None = None

    def install(self) -> None:
        super().install()
        attn = self.layers[self.k - 1].self_attn
        self.handles.append(attn.register_forward_pre_hook(self._on_attention, with_kwargs=True))

    def _on_attention(self, module, args, kwargs):
        if self.call is None or not bool(self.call.vision.any()):
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        cos, sin = compat.rotary_tables(kwargs["position_embeddings"], self.model.config)
        self.scores = last_token_attention(module, hidden, cos, sin, kwargs.get("attention_mask"))

    def select(self, call, hidden):
        vision = call.vision.to(hidden.device)
        if self.scores is None or not bool(vision.any()):
            return torch.zeros_like(vision)
        scores = self.scores.to(hidden.device).masked_fill(~vision, float("inf"))
        self.scores = None
        drop = torch.zeros_like(vision)
        order = scores.argsort(1)  # least attended vision tokens first
        for row in range(vision.shape[0]):
            n_drop = int(round(float(vision[row].sum()) * self.ratio))
            drop[row, order[row, :n_drop]] = True
        return drop


@contextlib.contextmanager
def fastv(model: nn.Module, k: int = 2, ratio: float = 0.5) -> Iterator[nn.Module]:
    """FastV inside the block: after layer ``k - 1``, drop the ``ratio`` least-attended vision tokens."""
    n = num_layers(model)
    check_k(k, n, lo=1, what="FastV K")
    if not 0.0 <= ratio <= 1.0:
        raise ArgumentError(f"FastV ratio must be in [0, 1], got {ratio!r}")
    if k < n and ratio > 0:
        check_supported(model, k)
    with active(model, FastVEngine(model, k, ratio), install=k < n and ratio > 0):
        yield model
