"""SparseVLM (Zhang et al., ICML 2025, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language
Model Inference"): text *raters* chosen once per prompt score the vision tokens by their attention at a few
layers; at each such layer only the best-scored vision tokens stay. The rule is the authors' current default
(github Gumpest/SparseVLMs, main, ``USE_VERSION`` unset: the v1.5 rule; docs/methods.md "SparseVLM"):

1. raters (once per prefill): ``m = softmax_T(v @ t^T).mean(V)`` over the vision tokens ``v`` and the text
   tokens ``t`` after the image; the raters are the text tokens with ``m > mean(m)`` (``rater_mask``);
2. at each of ``layers`` (LLaVA-1.5: 2, 6, 15) the post-softmax attention of the layer (causal, all heads
   averaged) from the raters to the current vision tokens, averaged over the raters, scores them
   (``rater_attention``); the ``min(count, V - 1)`` best stay (``stage_keep``), ``count`` from the
   per-budget table ``COUNTS`` (a fixed count per stage: the v1.0 matrix-rank count is gone), the others
   leave after that layer, i.e. before layer ``layer + 1`` (the policy's ``stages``);
3. the authors then *recycle* the best 30 % of the dropped tokens into ``int(m / 10) + 1`` averaged cluster
   tokens (``recycle``: density-peak clustering of the layer's output states) inserted after the kept vision
   tokens. The engine only removes tokens, so the policy ``SparseVLM`` does not insert them (the variant
   documented in docs/methods.md); ``recycle`` is the authors' computation, tested, for an engine that can.

Differences of the policy from the authors' code (docs/methods.md): no recycled tokens, original positions
(the authors renumber the kept tokens contiguously), raters from the input-normed embeddings (the attention
inputs of layer 0 that ``observe`` receives; the authors use the raw embeddings), every row of a batch.
"""

from __future__ import annotations

import torch

from ...errors import ArgumentError
from ..registry import Setting
from . import Policy, Tokens

LAYERS = (2, 6, 15)  # the authors' pruning_loc: the layers whose attention scores; tokens leave after them
COUNTS = {  # score.py sparse_token_dict (v1.5 rule, USE_VERSION unset): vision tokens kept at each layer
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}
RETAIN = 192  # RETAIN_TOKN's default
DEFAULTS = {"layers": LAYERS, "retain": RETAIN}
SETTINGS = (
    Setting("layers", LAYERS, "the layers whose raters' attention scores; tokens leave after each", "ints", lo=0),
    Setting("retain", RETAIN, "the authors' token budget (64, 96, 128 or 192: their kept count per stage)", "int",
            lo=1, grid=(64, 96, 128, 192)),
)


def validate(settings: dict) -> None:
    try:
        stage_counts(settings["layers"], settings["retain"])
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None


RECYCLE_SHARE = 0.3  # the best 30 % of the dropped tokens are recycled
CLUSTER_SIZE = 10  # one recycled token per 10 of them (int(m / 10) + 1)


def stage_counts(layers=LAYERS, retain: int | None = RETAIN, counts=None) -> tuple[int, ...]:
    """The kept-count of each stage: ``counts`` if given, else the authors' table for ``retain``."""
    if counts is None:
        if retain not in COUNTS:
            raise ValueError(f"SparseVLM retain must be one of {sorted(COUNTS)} (or give counts), got {retain!r}")
        counts = COUNTS[retain]
    counts = tuple(int(c) for c in counts)
    if len(counts) != len(layers):
        raise ValueError(f"SparseVLM: {len(layers)} layers but {len(counts)} counts")
    return counts


def kept_after(vision: int, count: int) -> int:
    """Vision tokens a stage keeps of ``vision``: ``min(count, vision - 1)`` (the authors always drop one)."""
    return max(min(count, vision - 1), 0) if vision > 0 else 0


def vision_by_layer(num_layers: int, vision: int, text: int, layers=LAYERS, retain: int | None = RETAIN,
                    counts=None) -> list[int]:
    """Vision tokens each layer of a ``num_layers`` model sees: the counts are fixed per stage (not data
    dependent), so FLOPs are exact. ``text`` does not change them (text tokens never leave)."""
    counts = stage_counts(layers, retain, counts)
    out, cur = [], vision
    drops = dict(zip((layer + 1 for layer in layers), counts, strict=True))
    for i in range(num_layers):
        if i in drops:
            cur = kept_after(cur, drops[i])
        out.append(cur)
    return out


def rater_mask(embeds: torch.Tensor, vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """One row: the raters, [q] bool. ``embeds`` [q, H] the states the raters are chosen from, ``vision``
    [q] bool the vision tokens, ``text`` [q] bool the candidate text tokens (after the image)."""
    out = torch.zeros_like(vision)
    if not bool(vision.any()) or not bool(text.any()):
        return out
    m = (embeds[vision].float() @ embeds[text].float().T).softmax(1).mean(0)  # [T]
    above = m > m.mean()
    if not bool(above.any()):  # every candidate rates alike (all equal): all of them rate, not none
        above = m >= m.mean()
    out[text.nonzero().squeeze(1)[above]] = True
    return out


def rater_attention(query: torch.Tensor, keys: torch.Tensor, scaling: float, allowed: torch.Tensor,
                    raters: torch.Tensor) -> torch.Tensor:
    """One row: each token's attention from the raters, [q]: softmax over the allowed keys of each rater's
    query row (all heads), averaged over heads and raters. ``query`` [heads, q, D], ``keys`` [kv heads, q, D]
    (rotated), ``allowed`` [q, q] bool (query x key), ``raters`` [q] bool."""
    rows = raters.nonzero().squeeze(1)
    k = keys.repeat_interleave(query.shape[0] // keys.shape[0], dim=0)
    s = (query[:, rows].float() @ k.float().transpose(-1, -2)) * scaling  # [heads, R, q]
    s = s.masked_fill(~allowed[rows][None], float("-inf"))
    return s.softmax(-1).mean(0).mean(0)


def stage_keep(scores: torch.Tensor, vision: torch.Tensor, count: int) -> torch.Tensor:
    """One row: the vision tokens a stage keeps, [q] bool: the ``min(count, V - 1)`` best scored."""
    idx = vision.nonzero().squeeze(1)
    keep = torch.zeros_like(vision)
    n = kept_after(len(idx), count)
    if n > 0:
        keep[idx[scores[idx].topk(n).indices]] = True
    return keep


def cluster_and_merge(x: torch.Tensor, cluster_num: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' density-peak clustering (DPC-kNN) of ``x`` [N, C] into ``cluster_num`` averaged tokens,
    [cluster_num, C], in the order of the cluster centres' scores. ``noise`` [N] breaks density ties (the
    authors: ``rand * 1e-6``; None: the same, drawn here)."""
    n, c = x.shape
    dist = torch.cdist(x.float()[None], x.float()[None])[0] / c ** 0.5
    near = dist.topk(cluster_num, dim=-1, largest=False).values
    density = (-(near ** 2).mean(-1)).exp()
    density = density + (torch.rand(n, device=x.device) * 1e-6 if noise is None else noise.to(density))
    higher = density[None, :] > density[:, None]  # [i, j]: j is denser than i
    parent_dist = torch.where(higher, dist, dist.max()).min(-1).values
    centres = (parent_dist * density).topk(cluster_num).indices
    assign = dist[centres].argmin(0)
    assign[centres] = torch.arange(cluster_num, device=x.device)
    sizes = torch.zeros(cluster_num, device=x.device).index_add_(0, assign, torch.ones(n, device=x.device)) + 1e-6
    merged = torch.zeros(cluster_num, c, device=x.device).index_add_(0, assign, x.float() / sizes[assign, None])
    return merged.to(x.dtype)


def recycle(hidden: torch.Tensor, dropped: torch.Tensor, scores: torch.Tensor,
            noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One row, one stage: the authors' recycled tokens. ``hidden`` [q, H] the stage layer's output,
    ``dropped`` [q] bool the vision tokens the stage drops, ``scores`` [q] their rater attention. The best
    ``int(0.3 m) + 1`` of the ``m`` dropped (by score) are clustered into ``int(that / 10) + 1`` averaged
    tokens. Returns (recycled states [c, H], which tokens were recycled: [r] indices, best first). The authors
    insert them right after the kept vision tokens (before the text after the image), at the next contiguous
    positions, and count them as vision tokens of the next stage."""
    idx = dropped.nonzero().squeeze(1)
    if len(idx) == 0:
        return hidden.new_zeros(0, hidden.shape[-1]), idx
    chosen = idx[scores[idx].topk(int(len(idx) * RECYCLE_SHARE) + 1).indices]
    return cluster_and_merge(hidden[chosen], int(len(chosen) / CLUSTER_SIZE) + 1, noise), chosen


class SparseVLM(Policy):
    """SparseVLM without recycling over the multi-stage engine: vision tokens leave after each of ``layers``
    (before ``stages = layer + 1``), the ``counts`` (or the table for ``retain``) best scored by the raters'
    attention at that layer stay."""

    name = "sparsevlm"

    def __init__(self, layers=LAYERS, retain: int | None = RETAIN, counts=None):
        layers = tuple(int(layer) for layer in layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise ValueError(f"SparseVLM layers must be increasing layer indices, got {layers!r}")
        self.layers = layers
        self.counts = stage_counts(layers, retain, counts)
        self.retain = retain if counts is None else None
        super().__init__(layers[0] + 1)
        self.observe_layers = tuple(sorted({0, *layers}))
        self.embeds: torch.Tensor | None = None  # [B, q, H]: layer 0's attention input (the rater source)
        self.seen: dict[int, tuple] = {}  # layer -> (queries, keys, scaling, mask) of its attention
        self.raters: torch.Tensor | None = None  # [B, q0]: this prefill's raters, in the call's layout

    @property
    def stages(self) -> tuple[int, ...]:
        """The layers before which tokens leave: one after each of ``layers`` (a property, so that it overrides
        the base class's default ``(k,)`` whether that is an attribute or a property)."""
        return tuple(layer + 1 for layer in self.layers)

    def active(self, num_layers: int) -> bool:
        return self.k < num_layers

    def observe(self, layer, attn, hidden, cos, sin, mask) -> None:
        from ...attention import project, rotate

        if layer == 0:
            self.embeds = hidden
        if layer in self.layers:
            q = rotate(project(attn, "q", hidden), cos, sin)
            k = rotate(project(attn, "k", hidden), cos, sin)
            self.seen[layer] = (q, k, attn.scaling, mask)

    def select(self, tokens: Tokens) -> torch.Tensor:
        vision = tokens.vision.to(tokens.hidden.device)
        layer = getattr(tokens, "layer", self.k)
        stage = self.stages.index(layer) if layer in self.stages else None
        seen = self.seen.pop(layer - 1, None)
        if stage is None or seen is None or self.embeds is None or tokens.past > 0 or not bool(vision.any()):
            return torch.zeros_like(vision)
        dev = vision.device
        b, q = vision.shape
        index = getattr(tokens, "index", None)
        index = torch.arange(q, device=dev).expand(b, q) if index is None else index.to(dev)
        valid = tokens.valid.to(dev) & (index >= 0)
        if stage == 0:
            self.seen = {}  # what later layers of an earlier call left
            self.raters = self._raters(vision, valid, index)
        if self.raters is None:
            return torch.zeros_like(vision)
        raters = self.raters.to(dev).gather(1, index.clamp(min=0)) & valid
        query, keys, scaling, mask = seen
        allowed = (index[:, None, :] <= index[:, :, None]) & valid[:, None, :]  # [B, query, key]
        if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[-2] == q and mask.shape[-1] >= q:
            m = mask[:, 0, :, :q].to(dev)  # the layer's own mask (sliding windows, blocks), key slots of this call
            allowed &= m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        drop = torch.zeros_like(vision)
        for row in range(b):
            v = vision[row] & valid[row]
            if not bool(v.any()) or not bool(raters[row].any()):
                continue
            scores = rater_attention(query[row], keys[row], scaling, allowed[row], raters[row])
            drop[row] = v & ~stage_keep(scores, v, self.counts[stage])
        if stage == len(self.stages) - 1:
            self.embeds, self.seen, self.raters = None, {}, None
        return drop

    def _raters(self, vision: torch.Tensor, valid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[B, q0] the raters of each row over the call's tokens (layer 0's layout; ``index`` maps the current
        tokens there): among the real text tokens after the row's last vision token."""
        embeds = self.embeds.to(vision.device)
        b, q0 = embeds.shape[:2]
        slot = torch.where(index >= 0, index, q0)
        vision = torch.zeros(b, q0 + 1, dtype=torch.bool, device=vision.device).scatter(1, slot, vision)[:, :q0]
        valid = torch.zeros(b, q0 + 1, dtype=torch.bool, device=valid.device).scatter(1, slot, valid)[:, :q0]
        last = torch.where(vision, torch.arange(vision.shape[1], device=vision.device), -1).max(1).values
        after = torch.arange(vision.shape[1], device=vision.device)[None] > last[:, None]
        text = after & valid & ~vision
        return torch.stack([rater_mask(embeds[r], vision[r] & valid[r], text[r]) for r in range(vision.shape[0])])

    def __repr__(self) -> str:
        return f"SparseVLM(layers={self.layers}, counts={self.counts})"
