"""PyramidDrop (Xing et al., CVPR 2025, "PyramidDrop: Accelerating Your Large Vision-Language Models via
Pyramid Visual Redundancy Reduction"): vision tokens leave in stages, keeping a fraction λ of them at each.

As the authors' code does it (Cooperx521/PyramidDrop, ``llava/model/modeling_llama_pdrop.py``:
``pdrop_forward`` and ``pdrop_rank_drop``), per row of a prefill call with ``N`` vision tokens, at each
stage layer ``k_s`` (s = 1, 2, ...; LLaVA-1.5 and LLaVA-NeXT: 8, 16, 24, λ = 0.5):

1. the hidden states entering layer ``k_s`` go through that layer's input norm, query and key projections
   and rotary embedding (layer ``k_s``'s own weights, the positions the tokens have there);
2. the attention of the last instruction token (the last prompt token) over every token still kept:
   softmax of ``q . k / sqrt(d)`` under the causal mask, in float32, averaged over heads;
3. of the ``int(N * λ^(s-1))`` vision tokens still kept, the ``int(N * λ^s)`` most attended stay (counts
   from the original ``N``, truncated as Python's ``int``); the others leave before layer ``k_s`` runs.

Decoding steps select nothing; the layers of each stage cache the tokens they ran on. The scores are
computed from ``Tokens.attention()`` (the engine's view of the stage layer's attention inputs), so any
attention implementation works. docs/methods.md, "PyramidDrop", lists where ours differs.
"""

from __future__ import annotations

import torch

from ...errors import ArgumentError
from ..registry import Setting
from . import Attention, Policy, Tokens

LAYERS = (8, 16, 24)  # the authors' stage layers for LLaVA-1.5 and LLaVA-NeXT (--layer_list '[8,16,24]')
RATIO = 0.5  # λ: the fraction of the vision tokens still kept that each stage keeps
DEFAULTS = {"layers": LAYERS, "ratio": RATIO}
SETTINGS = (
    Setting("layers", LAYERS, "the stage layers (tokens leave before each; the authors' 8,16,24)", "ints", lo=1),
    Setting("ratio", RATIO, "λ: the fraction of the vision tokens still kept that each stage keeps", "float",
            lo=0.0, hi=1.0, grid=(0.25, 0.5, 0.75)),
)


def validate(settings: dict) -> None:
    check_settings(settings["layers"], settings["ratio"])


def check_settings(layers, ratio, num_layers: int | None = None) -> tuple[int, ...]:
    """``layers`` as a tuple of increasing layers >= 1 (and < ``num_layers`` where given), ``ratio`` in
    [0, 1]; raises ``ArgumentError`` (a ``ValueError``) otherwise."""
    try:
        stages = tuple(layers)
    except TypeError:
        raise ArgumentError(f"PyramidDrop layers must be a list of layers, got {layers!r}") from None
    if not stages or any(isinstance(k, bool) or not isinstance(k, int) for k in stages):
        raise ArgumentError(f"PyramidDrop layers must be one or more integer layers, got {layers!r}")
    if any(b <= a for a, b in zip(stages, stages[1:])) or stages[0] < 1:
        raise ArgumentError(f"PyramidDrop layers must be increasing layers >= 1, got {list(stages)}")
    if num_layers is not None and stages[-1] >= num_layers:
        raise ArgumentError(f"PyramidDrop layers must be below the model's {num_layers} layers, got {list(stages)}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ArgumentError(f"PyramidDrop ratio (λ, the fraction kept per stage) must be in [0, 1], got {ratio!r}")
    return stages


def kept_counts(vision: int, stages: int, ratio: float) -> list[int]:
    """The vision tokens a row of ``vision`` keeps after each of ``stages`` stages: ``int(vision * ratio ** s)``
    for s = 1..stages (the authors' ``int(N * image_token_ratio_list[s])``, their list being λ^s)."""
    return [int(vision * ratio ** s) for s in range(1, stages + 1)]


def vision_by_layer(num_layers: int, vision: int, text: int, layers=LAYERS, ratio: float = RATIO) -> list[int]:
    """The vision tokens each decoder layer runs on in a prefill of ``vision`` vision and ``text`` text tokens
    (text tokens always stay): ``vision`` before the first stage layer, then the stage's kept count."""
    stages = check_settings(layers, ratio, num_layers)
    counts = [vision, *kept_counts(vision, len(stages), ratio)]
    return [counts[sum(1 for k in stages if k <= i)] for i in range(num_layers)]


def last_instruction_attention(att: Attention, valid: torch.Tensor) -> torch.Tensor:
    """[B, q]: the head-averaged softmax attention of each row's last real token (the last instruction token
    of a prompt) over the tokens, from the attention inputs ``att`` (float32 scores)."""
    from ...attention import last_query_attention, project, rotate

    b, q = valid.shape
    last = torch.where(valid, torch.arange(q, device=valid.device), -1).amax(1)
    rows = torch.arange(b, device=valid.device)
    keys = rotate(project(att.module, "k", att.hidden), att.cos, att.sin)
    return last_query_attention(att.module, att.hidden[rows, last][:, None], att.cos[rows, last][:, None],
                                att.sin[rows, last][:, None], keys, att.mask[rows, 0, last][:, None, None, :])


class PyramidDrop(Policy):
    """Vision tokens leave before each of ``layers``; each stage keeps the fraction ``ratio`` (λ) of them."""

    name = "pdrop"
    positions = "rearrange"  # what run/profile/lmms-eval use: the authors renumber the kept tokens per stage

    def __init__(self, layers=LAYERS, ratio: float = RATIO):
        self.layers = check_settings(layers, ratio)
        super().__init__(self.layers[0])
        self.ratio = float(ratio)
        self._vision: list[int] | None = None  # this call's vision tokens per row (set at the first stage)

    @property
    def stages(self) -> tuple[int, ...]:
        return self.layers

    def active(self, num_layers: int) -> bool:
        check_settings(self.layers, self.ratio, num_layers)  # every stage layer inside the model (no K = N)
        return self.ratio < 1

    def select(self, tokens: Tokens) -> torch.Tensor:
        vision = tokens.vision.to(tokens.hidden.device)
        drop = torch.zeros_like(vision)
        stage = self.layers.index(tokens.layer)
        if stage == 0:  # a prefill with vision tokens selects (decoding steps never read the device)
            prefill = tokens.past == 0 and tokens.attention is not None
            self._vision = vision.sum(1).tolist() if prefill and bool(vision.any()) else None
        if self._vision is None:
            return drop
        scores = last_instruction_attention(tokens.attention(), tokens.valid.to(vision.device))
        for row, n in enumerate(self._vision):
            idx = vision[row].nonzero().squeeze(1)
            if n == 0 or len(idx) == 0:
                continue
            keep = min(kept_counts(n, stage + 1, self.ratio)[-1], len(idx))
            drop[row, idx] = True
            drop[row, idx[scores[row, idx].topk(keep).indices]] = False
        return drop

    def __repr__(self) -> str:
        return f"PyramidDrop(layers={list(self.layers)}, ratio={self.ratio})"
