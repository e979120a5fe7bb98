"""DART (Wen et al., 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More"): at layer K (default 2) keep a few *pivot* tokens and the vision tokens least duplicated
by them; the other vision tokens leave.

As the authors' code does it (ZichenWen1/DART, ``get_retained_image_token``), per row of a prefill call:

1. pivots: the ``pivots_image`` vision tokens and the ``pivots_text`` prompt tokens after the first vision
   token with the largest L1 norm of their keys at layer K-1 (post-rotary, all heads);
2. each pivot in turn (in token order) takes the ``budget // pivots`` not yet taken, non-pivot vision
   tokens least similar to it (cosine similarity of the hidden states entering layer K after the
   language model's final norm), where ``budget = round((1 - ratio) * vision tokens)``;
3. kept: the vision pivots and what the pivots took; every other vision token leaves.

The keys come from ``observe`` at layer K-1 (the attention module's own projection and rotary tables, as
FastV's scores do), the normed hidden states from ``Tokens.hidden`` and ``Tokens.norm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ArgumentError, check_k
from ..registry import Setting
from . import Policy, Tokens

PIVOTS = (4, 4)  # the authors' defaults: 4 vision pivots, 4 text pivots
RATIO = 0.778  # the authors' default reduction ratio (LLaVA-1.5: 576 vision tokens -> about 128 kept)
SETTINGS = (
    Setting("k", 2, "the layer DART drops at (the authors' pruned_layer 2)", "int", lo=1, grid=(2,)),
    Setting("ratio", RATIO, "the fraction of vision tokens dropped, pivots aside", "float", lo=0.0, hi=1.0,
            grid=(0.5, 0.667, 0.778, 0.889)),
    Setting("pivots", PIVOTS, "vision,text pivot tokens", "pair", lo=0),
)


def validate(settings: dict) -> None:
    if sum(settings["pivots"]) < 1:
        raise ArgumentError(f"dart.pivots must be two integers >= 0 (vision, text), not both 0, got "
                            f"{settings['pivots']!r}")


def vision_by_layer(num_layers: int, vision: int, text: int, k: int = 2, ratio: float = RATIO,
                    pivots: tuple[int, int] = PIVOTS) -> list[int]:
    """The vision tokens each decoder layer sees in prefill: all in layers ``0..k-1``, ``kept_count`` after
    (every text token counted as a possible text pivot, as if all of it followed the image)."""
    check_k(k, num_layers, lo=1, what="dart.k")
    kept = kept_count(vision, text, ratio, tuple(pivots))
    return [vision if i < k else kept for i in range(num_layers)]


def kept_count(vision: int, text: int, ratio: float, pivots: tuple[int, int]) -> int:
    """How many of ``vision`` tokens DART keeps with ``text`` candidate text pivots: the vision pivots and
    ``budget // pivots`` per pivot (``budget = round((1 - ratio) * vision)``), at most every vision token."""
    n_img, n_txt = min(pivots[0], vision), min(pivots[1], text)
    if n_img + n_txt == 0:
        return 0
    return n_img + min(vision - n_img, int(round(vision * (1 - ratio))) // (n_img + n_txt) * (n_img + n_txt))


def dart_keep(vision: torch.Tensor, query: torch.Tensor, key_norm: torch.Tensor, hidden: torch.Tensor,
              ratio: float, pivots: tuple[int, int]) -> torch.Tensor:
    """One row: the vision tokens DART keeps, [q] bool. ``vision``/``query`` [q] bool (vision tokens; text
    tokens that may be pivots), ``key_norm`` [q] the L1 norm of each token's keys at layer K-1,
    ``hidden`` [q, H] the normed hidden states compared by cosine similarity."""
    idx, text = vision.nonzero().squeeze(1), query.nonzero().squeeze(1)
    keep = torch.zeros_like(vision)
    n_img, n_txt = min(pivots[0], len(idx)), min(pivots[1], len(text))
    if n_img + n_txt == 0:
        return keep
    img_piv = idx[key_norm[idx].topk(n_img).indices]
    txt_piv = text[key_norm[text].topk(n_txt).indices]
    keep[img_piv] = True
    per_pivot = int(round(len(idx) * (1 - ratio))) // (n_img + n_txt)
    free = vision.clone()
    free[img_piv] = False
    for p in torch.cat([img_piv, txt_piv]).sort().values.tolist():
        cand = free.nonzero().squeeze(1)
        n = min(per_pivot, len(cand))
        if n == 0:
            break
        sim = F.cosine_similarity(hidden[p][None].float(), hidden[cand].float(), dim=-1)
        took = cand[(-sim).topk(n).indices]
        keep[took] = True
        free[took] = False
    return keep


class DART(Policy):
    name = "dart"

    def __init__(self, k: int = 2, ratio: float = RATIO, pivots: tuple[int, int] = PIVOTS):
        super().__init__(k)
        self.ratio = ratio
        self.pivots = (int(pivots[0]), int(pivots[1]))
        self.observe_layers = (k - 1,)
        self.key_norm: torch.Tensor | None = None

    def active(self, num_layers: int) -> bool:
        return self.k < num_layers and self.ratio > 0

    def observe(self, layer, attn, hidden, cos, sin, mask) -> None:
        from ...attention import project, rotate

        keys = rotate(project(attn, "k", hidden), cos, sin)  # [B, heads, q, D]
        self.key_norm = keys.float().abs().sum((1, 3))  # [B, q]: the L1 norm over all heads

    def select(self, tokens: Tokens) -> torch.Tensor:
        vision = tokens.vision.to(tokens.hidden.device)
        key_norm, self.key_norm = self.key_norm, None
        if key_norm is None or tokens.past > 0 or not bool(vision.any()):
            return torch.zeros_like(vision)
        valid = tokens.valid.to(vision.device)
        hidden = tokens.norm(tokens.hidden) if tokens.norm is not None else tokens.hidden
        after = vision.long().cumsum(1) > 0  # at or after the first vision token
        query = after & ~vision & valid
        drop = torch.zeros_like(vision)
        for row in range(vision.shape[0]):
            if bool(vision[row].any()):
                keep = dart_keep(vision[row], query[row], key_norm[row].to(vision.device), hidden[row],
                                 self.ratio, self.pivots)
                drop[row] = vision[row] & ~keep
        return drop

    def __repr__(self) -> str:
        return f"DART(k={self.k}, ratio={self.ratio}, pivots={self.pivots})"
