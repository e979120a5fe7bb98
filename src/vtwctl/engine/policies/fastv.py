"""FastV (Chen et al., 2024): at layer K (default 2) the fraction ``ratio`` of the vision tokens that get
the least attention from the last prompt token at layer K-1 (averaged over heads) leave. The attention row
is computed from the query of the last token and the keys (``q . k`` with the model's own projections and
rotary embedding), so FastV works with sdpa and flash attention, not only eager."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import check_k
from ..registry import Setting
from . import Policy, Tokens

SETTINGS = (
    Setting("k", 2, "the layer FastV drops at (layers 0..k-1 see every token; the paper's 2)", "int", lo=1,
            grid=(2,)),
    Setting("ratio", 0.5, "the fraction of vision tokens dropped (the authors' fastv_kvcache.py gives the kept "
            "fraction)", "float", lo=0.0, hi=1.0, grid=(0.25, 0.5, 0.75, 0.9)),
)


def dropped_count(vision: int, ratio: float) -> int:
    """How many of ``vision`` tokens FastV drops: all but the ``round(vision * (1 - ratio))`` it keeps (the
    authors' ``topk(round(image_token_length * kept_ratio))``, Python's rounding)."""
    return vision - int(round(vision * (1.0 - ratio)))


def vision_by_layer(num_layers: int, vision: int, text: int, k: int = 2, ratio: float = 0.5) -> list[int]:
    """The vision tokens each decoder layer sees in prefill: all in layers ``0..k-1``, the kept ones after."""
    check_k(k, num_layers, lo=1, what="fastv.k")
    kept = vision - dropped_count(vision, ratio)
    return [vision if i < k else kept for i in range(num_layers)]


def last_token_attention(attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         mask: torch.Tensor | None) -> torch.Tensor:
    """Head-averaged attention of the last query over all keys of one attention module: [B, S].

    ``hidden`` is the attention input (after the input layer norm), ``cos``/``sin`` [B, S, D] the
    rotary tables the layer receives, ``mask`` the layer's 4D mask or None (plain causal).
    """
    from ...attention import last_query_attention, project, rotate

    keys = rotate(project(attn, "k", hidden), cos, sin)
    row = mask[:, :, -1:, :] if isinstance(mask, torch.Tensor) and mask.ndim == 4 else None
    return last_query_attention(attn, hidden[:, -1:], cos[:, -1:], sin[:, -1:], keys, row)


class FastV(Policy):
    name = "fastv"

    def __init__(self, k: int = 2, ratio: float = 0.5):
        super().__init__(k)
        self.ratio = ratio
        self.observe_layers = (k - 1,)
        self.scores: torch.Tensor | None = None

    def active(self, num_layers: int) -> bool:
        return self.k < num_layers and self.ratio > 0

    def observe(self, layer, attn, hidden, cos, sin, mask) -> None:
        self.scores = last_token_attention(attn, hidden, cos, sin, mask)

    def select(self, tokens: Tokens) -> torch.Tensor:
        vision = tokens.vision.to(tokens.hidden.device)
        if self.scores is None or not bool(vision.any()):
            return torch.zeros_like(vision)
        scores = self.scores.to(vision.device).masked_fill(~vision, float("inf"))
        self.scores = None
        drop = torch.zeros_like(vision)
        order = scores.argsort(1)  # least attended vision tokens first
        for row in range(vision.shape[0]):
            n_drop = dropped_count(int(vision[row].sum()), self.ratio)
            drop[row, order[row, :n_drop]] = True
        return drop
