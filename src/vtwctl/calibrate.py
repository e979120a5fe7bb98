"""Calibration of the withdrawal layer K (Eq. 6): the first K whose mean KL is below eta.

For each calibration sample the stock model runs once; the hidden state entering every layer
>= k_min is kept at the text positions only. Candidate K then needs only the text-only tail: layers
K..N-1 over the text tokens, which is exactly what VTW computes after withdrawing at K. All
candidates active at a layer run as one batch, and only the last position(s) go through the final
norm and lm_head. Cost: one prefill plus sum_K (N-K) * text token-layers, instead of one full VTW
forward per candidate.

KL direction and reduction follow the paper's reference code,
``KLDivLoss(log_softmax(base), softmax(vtw))`` summed per sample: KL(P_vtw || P_base), in fp32.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from . import compat, plan
from .errors import VTWError, check_k
from .families import adapter_for, vision_mask
from .withdraw import carries_visual, check_prompt_end


def kl_vtw_base(vtw_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_vtw || P_base) over the last dim, in fp32 (``KLDivLoss(log_softmax(base), softmax(vtw))``)."""
    lv = torch.log_softmax(vtw_logits.float(), -1)
    lb = torch.log_softmax(base_logits.float(), -1)
    return (lv.exp() * (lv - lb)).sum(-1)


def _text_index(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the kept tokens, validity [S]) of a one-row input; a VTWError if it ends with a vision token."""
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("the KL sweep runs one sample at a time")
    valid = torch.ones_like(ids, dtype=torch.bool)
    if "attention_mask" in inputs:
        valid &= inputs["attention_mask"].bool()
    vision = vision_mask(ids, adapter_for(model).vision_token_ids(model.config), visual=carries_visual(inputs))
    check_prompt_end(vision, valid)
    return (valid & ~vision)[0].nonzero().squeeze(1), valid[0]


def _text_masks(model, inputs: dict, idx: torch.Tensor, valid: torch.Tensor, layers: range, dtype) -> dict:
    """Per layer: the attention mask of the text-only tail over the kept tokens ``idx`` (causal by
    original index, the layer's sliding window, the family's bidirectional blocks), as the layer's
    attention implementation takes it; layers with the same mask share one object."""
    adapter = adapter_for(model)
    n = len(adapter.text_model(model).layers)
    window = compat.sliding_window(model.config)
    types = compat.layer_types(model.config, n)
    impl = compat.attn_implementation(model)
    pos = idx[None].to(valid.device)
    t = idx.numel()
    blocks = {}
    block = adapter.attention_blocks(inputs.get("token_type_ids"), valid[None])
    if block is not None:
        blocks = dict(key_block=block[:, idx], query_block=block[:, idx])
    out, made = {}, {}
    for i in layers:
        w = window if types[i] == "sliding_attention" else None
        if w not in made:
            allowed = plan.allowed_keys(pos, pos, torch.arange(t, device=pos.device), w, **blocks)
            trivial = w is None and not blocks and impl == "sdpa"
            made[w] = compat.format_mask(allowed, impl, dtype, trivial)
        out[i] = made[w]
    return out


@torch.no_grad()
def sweep_sample(model, inputs: dict, k_min: int, tokens: int = 1) -> torch.Tensor:
    """KL(P_vtw(K) || P_base) for K = k_min..N-1 on one sample: a tensor [N - k_min].

    ``inputs`` is one row (batch 1). The KL is averaged over the distributions of the last
    ``tokens`` positions (1: the first output token).
    """
    adapter = adapter_for(model)
    text = adapter.text_model(model)
    layers = text.layers
    n = len(layers)
    check_k(k_min, n, hi=n - 1, what="k_min")
    idx, valid = _text_index(model, inputs)
    states: dict[int, torch.Tensor] = {}
    layer_kw: dict[int, dict] = {}

    def grab(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            states[i] = hidden[:, idx.to(hidden.device)]
            layer_kw[i] = kwargs
        return hook

    handles = [layers[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in range(k_min, n)]
    try:
        base = model(**inputs, use_cache=False, logits_to_keep=tokens).logits[0, -tokens:]
    finally:
        for h in handles:
            h.remove()

    masks = _text_masks(model, inputs, idx, valid, range(k_min, n), states[k_min].dtype)
    h = None
    for layer_idx in range(k_min, n):
        new = states.pop(layer_idx)
        h = new if h is None else torch.cat([h.to(new.device), new], 0)  # candidate K = layer_idx joins
        c = h.shape[0]
        kw = layer_kw[layer_idx]
        at = idx.to(h.device)
        pe = plan.map_tensors(kw["position_embeddings"],
                              lambda x, at=at, c=c: x[..., at.to(x.device), :].to(at.device).expand(c, -1, -1))
        pos = kw.get("position_ids")
        if isinstance(pos, torch.Tensor):
            pos = pos[..., at].to(h.device).expand(*pos.shape[:-2], c, -1)
        mask = masks[layer_idx]
        if isinstance(mask, torch.Tensor):
            mask = mask.to(h.device).expand(c, *mask.shape[1:])
        out = layers[layer_idx](h, attention_mask=mask, position_embeddings=pe, position_ids=pos,
                                use_cache=False)
        h = compat.output_hidden(out)
    last = text.norm(h[:, -tokens:])
    logits = model.lm_head(last)  # [C, tokens, V]
    return kl_vtw_base(logits, base.to(logits.device)[None]).mean(-1).float().cpu()


@torch.no_grad()
def teacher_forced(loaded, inputs: dict, tokens: int) -> dict:
    """``inputs`` extended by the stock model's first ``tokens - 1`` greedy answer tokens."""
    if tokens <= 1:
        return inputs
    out = loaded.model.generate(**inputs, max_new_tokens=tokens - 1, min_new_tokens=tokens - 1, do_sample=False,
                                temperature=None, top_p=None, top_k=None)
    new = out[:, inputs["input_ids"].shape[1]:]
    ext = dict(inputs)
    ext["input_ids"] = out
    if "attention_mask" in inputs:
        ext["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)
    if "mm_token_type_ids" in inputs:
        ext["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], 1)
    return ext


@dataclass
class Calibration:
    """The result of a KL sweep over K, with the chosen K for each eta."""

    model: str
    dataset: str
    split: str
    seed: int
    samples: int
    sample_ids: list[str]
    k_min: int
    num_layers: int
    tokens: int
    etas: list[float]
    chosen: dict[str, int]  # str(eta) -> K (num_layers when no K qualifies)
    kl: dict[str, float]  # str(K) -> mean KL over samples
    kl_max: dict[str, float]
    kl_per_sample: dict[str, list[float]]
    seconds: float
    accuracy: dict[str, float] | None = None  # str(K) -> accuracy (with --accuracy)
    baseline_accuracy: float | None = None
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    env: dict = field(default_factory=dict)
    schema: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def k_for(self, eta: float) -> int:
        return self.chosen[str(eta)]

    def qualifies(self, eta: float) -> bool:
        return self.chosen[str(eta)] < self.num_layers


def choose_k(kl_mean: dict[int, float], eta: float, num_layers: int) -> int:
    """The first K (ascending) whose mean KL is below ``eta``; ``num_layers`` if none."""
    for k in sorted(kl_mean):
        if kl_mean[k] < eta:
            return k
    return num_layers


def calibrate(loaded, task, etas: list[float], k_min: int = 5, samples: int = 20, seed: int = 0,
              split: str | None = None, tokens: int = 1, accuracy: int = 0, source: str | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> Calibration:
    """Sweep K over ``samples`` samples of ``task``'s calibration split and choose K per eta."""
    from .env import environment

    n = loaded.num_layers
    if not etas or any(e <= 0 for e in etas):
        raise VTWError(f"eta must be > 0, got {', '.join(map(str, etas)) or 'nothing'}")
    check_k(k_min, n, hi=n - 1, what="k_min")
    if samples < 1 or tokens < 1:
        raise VTWError("--samples and --tokens must be at least 1")
    split = split or task.calibration_split
    if split == task.test_split:
        raise VTWError(f"calibration must not use the test split ({split}) of {task.name}")
    data = task.load(split, samples, seed, source)
    if not data:
        raise VTWError(f"no samples in {task.name}/{split}")
    start = time.perf_counter()
    rows = []
    for i, s in enumerate(data):
        inputs = loaded.sample_inputs(s)
        inputs = teacher_forced(loaded, inputs, tokens)
        rows.append(sweep_sample(loaded.model, inputs, k_min, tokens))
        if progress:
            progress("kl", i + 1, len(data))
    kl = torch.stack(rows)  # [samples, candidates]
    ks = list(range(k_min, n))
    kl_mean = {k: float(kl[:, j].mean()) for j, k in enumerate(ks)}
    result = Calibration(
        model=loaded.name, dataset=task.name, split=split, seed=seed, samples=len(data),
        sample_ids=[s.id for s in data], k_min=k_min, num_layers=n, tokens=tokens, etas=list(etas),
        chosen={str(e): choose_k(kl_mean, e, n) for e in etas},
        kl={str(k): v for k, v in kl_mean.items()},
        kl_max={str(k): float(kl[:, j].max()) for j, k in enumerate(ks)},
        kl_per_sample={str(k): [float(x) for x in kl[:, j]] for j, k in enumerate(ks)},
        seconds=0.0, env=environment(loaded),
    )
    if accuracy:
        result.accuracy, result.baseline_accuracy = accuracy_sweep(loaded, task, data[:accuracy], ks, progress)
    result.seconds = time.perf_counter() - start
    return result


def accuracy_sweep(loaded, task, data, ks: list[int], progress=None) -> tuple[dict[str, float], float]:
    """Accuracy at each K (and of the stock model) on ``data`` (the paper's Fig. 8a)."""
    from .infer import generate

    correct = {k: 0 for k in [*ks, loaded.num_layers]}
    total = len(correct) * len(data)
    done = 0
    for s in data:
        inputs = loaded.sample_inputs(s)
        for k in correct:
            out = generate(loaded, inputs, k=k, max_new_tokens=task.max_new_tokens).answers[0]
            correct[k] += bool(task.score(s, task.parse(s, out)))
            done += 1
            if progress:
                progress("accuracy", done, total)
    base = correct.pop(loaded.num_layers) / len(data)
    return {str(k): v / len(data) for k, v in correct.items()}, base


def to_records(result: Calibration, source: str) -> list[dict]:
    """One profile record per eta (the first eta last, so that it is the newest)."""
    recs = []
    for eta in reversed(result.etas):
        k = result.k_for(eta)
        recs.append({
            "dataset": result.dataset, "eta": eta, "k": k, "withdraw": k < result.num_layers,
            "k_min": result.k_min, "samples": result.samples, "split": result.split, "seed": result.seed,
            "tokens": result.tokens, "kl": result.kl, "model_source": source, "date": result.date,
            "versions": result.env.get("versions", {}), "source": "vtwctl calibrate",
        })
    return recs
