"""Calibration of the withdrawal layer K (Eq. 6): the first K whose mean KL is below eta.

For each calibration sample the stock model runs once; the hidden state entering every layer
>= k_min is kept at the text positions only. Candidate K then needs only the text-only tail: layers
K..N-1 over the text tokens, which is exactly what VTW computes after withdrawing at K. All
candidates active at a layer run as one batch, and only the last position(s) go through the final
norm and lm_head. Cost: one prefill plus sum_K (N-K) * text token-layers, instead of one full VTW
forward per candidate.

KL direction and reduction follow the paper's reference code,
``KLDivLoss(log_softmax(base), softmax(vtw))`` summed per sample: KL(P_vtw || P_base), in fp32.
Both distributions come from the final norm and lm_head evaluated in fp32 on the last hidden states
(whatever the model's dtype), so bf16/fp16 rounding of the logits does not bias a small KL (at
eta = 1e-4, bf16 logits alone move the mean KL by several 1e-5).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from .engine import compat, plan
from .engine.families import adapter_for, vision_mask
from .engine.support import carries_visual, check_prompt_end
from .errors import ArgumentError, VTWError, check_k


def kl_vtw_base(vtw_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_vtw || P_base) over the last dim, in fp32 (``KLDivLoss(log_softmax(base), softmax(vtw))``)."""
    lv = torch.log_softmax(vtw_logits.float(), -1)
    lb = torch.log_softmax(base_logits.float(), -1)
    return (lv.exp() * (lv - lb)).sum(-1)


def head_fp32(model, norm: torch.nn.Module, hidden: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The model's logits, ``lm_head(norm(hidden))`` then the model's own scale or soft cap, computed in
    fp32 (the vocabulary in chunks, so a 7B head is never copied whole): [..., V]."""
    norm32 = copy.deepcopy(norm).float()
    x = norm32(hidden.float())
    head = model.lm_head if hasattr(model, "lm_head") else model.get_output_embeddings()
    w, b = head.weight, getattr(head, "bias", None)
    x = x.to(w.device)
    parts = [torch.nn.functional.linear(x, w[i:i + chunk].float(), None if b is None else b[i:i + chunk].float())
             for i in range(0, w.shape[0], chunk)]
    logits = torch.cat(parts, -1)
    # Cohere's logit scale, Gemma's soft capping: where the model's own forward applies them
    return compat.apply_logit_transform(logits, compat.logit_transform(model))


def _text_layout(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, T], valid [B, S]): per row the original indices of its text tokens (not vision, not
    padding), in order, right-aligned, -1 filling the left of shorter rows; and the non-padding mask.
    A VTWError if a row's prompt ends with a vision token."""
    ids = inputs["input_ids"]
    valid = torch.ones_like(ids, dtype=torch.bool)
    if "attention_mask" in inputs:
        valid &= inputs["attention_mask"].bool()
    vision = vision_mask(ids, adapter_for(model).vision_token_ids(model.config), visual=carries_visual(inputs))
    check_prompt_end(vision, valid)
    return plan.pack(valid & ~vision), valid


def _text_masks(model, inputs: dict, idx: torch.Tensor, valid: torch.Tensor, layers: range, dtype) -> dict:
    """Per layer: the attention mask [B, 1, T, T] of the text-only tail over the kept tokens ``idx``
    (causal by original index, the layer's sliding window, the family's bidirectional blocks, fill
    slots attending only themselves), as the layer's attention implementation takes it; layers with
    the same mask share one object."""
    adapter = adapter_for(model)
    n = len(adapter.text_model(model).layers)
    window = compat.sliding_window(model.config)
    types = compat.layer_types(model.config, n)
    impl = compat.attn_implementation(model)
    t = idx.shape[1]
    blocks = {}
    block = adapter.attention_blocks(inputs.get("token_type_ids"), valid)
    if block is not None:
        kept = torch.where(idx >= 0, plan.gather_seq(block.to(idx.device), idx, 1), torch.full_like(idx, -1))
        blocks = dict(key_block=kept, query_block=kept)
    no_fill = bool((idx >= 0).all())
    out, made = {}, {}
    for i in layers:
        w = window if types[i] == "sliding_attention" else None
        if w not in made:
            allowed = plan.allowed_keys(idx, idx, torch.arange(t, device=idx.device), w, **blocks)
            trivial = w is None and not blocks and impl == "sdpa" and no_fill and t > 1
            made[w] = compat.format_mask(allowed, impl, dtype, trivial, key_valid=idx >= 0)
        out[i] = made[w]
    return out


@torch.no_grad()
def sweep_batch(model, inputs: dict, k_min: int, tokens: int = 1) -> torch.Tensor:
    """KL(P_vtw(K) || P_base) for K = k_min..N-1 on every row of a (left-padded) batch: [B, N - k_min].

    One stock prefill of the batch keeps each layer's input at every row's text positions; the text-only
    tails of all candidates and rows then run together, rows right-aligned with masked fill slots. The KL
    is averaged over the distributions of the last ``tokens`` positions (1: the first output token).
    """
    adapter = adapter_for(model)
    text = adapter.text_model(model)
    layers = text.layers
    n = len(layers)
    check_k(k_min, n, hi=n - 1, what="k_min")
    idx, valid_full = _text_layout(model, inputs)  # [B, T]
    b, t = idx.shape
    valid = idx >= 0
    states: dict[int, torch.Tensor] = {}
    layer_kw: dict[int, dict] = {}
    final: dict[str, torch.Tensor] = {}

    def grab(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            got = plan.gather_seq(hidden, idx, 1)
            states[i] = got * valid.to(got.device)[..., None].to(got.dtype)
            layer_kw[i] = kwargs
        return hook

    def grab_final(module, args):
        final["h"] = args[0][:, -tokens:]

    handles = [layers[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in range(k_min, n)]
    handles.append(text.norm.register_forward_pre_hook(grab_final))
    try:
        model(**inputs, use_cache=False, logits_to_keep=tokens)
    finally:
        for h in handles:
            h.remove()
    base = head_fp32(model, text.norm, final["h"])  # [B, tokens, V]

    masks = _text_masks(model, inputs, idx, valid_full, range(k_min, n), states[k_min].dtype)

    def rep(x, c, bdim=0):  # candidate blocks of B rows: [c * B, ...] along the batch dim
        return torch.cat([x] * c, bdim % x.ndim) if c > 1 else x

    h = None
    for layer_idx in range(k_min, n):
        new = states.pop(layer_idx)
        h = new if h is None else torch.cat([h.to(new.device), new], 0)  # candidate K = layer_idx joins
        c = h.shape[0] // b
        kw = layer_kw[layer_idx]
        pe = plan.map_tensors(kw["position_embeddings"],
                              lambda x, c=c, d=h.device: rep(plan.gather_seq(x, idx, -2, bdim=-3).to(d), c, -3))
        pos = kw.get("position_ids")
        if isinstance(pos, torch.Tensor):
            pos = rep(plan.gather_seq(pos, idx, -1, bdim=-2).to(h.device), c, -2)
        mask = masks[layer_idx]
        if isinstance(mask, torch.Tensor):
            mask = rep(mask.to(h.device), c)
        out = layers[layer_idx](h, attention_mask=mask, position_embeddings=pe, position_ids=pos,
                                use_cache=False)
        h = compat.output_hidden(out)
    logits = head_fp32(model, text.norm, h[:, -tokens:])  # [C * B, tokens, V]
    kl = kl_vtw_base(logits.view(-1, b, *logits.shape[1:]), base.to(logits.device)[None]).mean(-1)  # [C, B]
    return kl.transpose(0, 1).float().cpu()


def sweep_sample(model, inputs: dict, k_min: int, tokens: int = 1) -> torch.Tensor:
    """``sweep_batch`` of one row: a tensor [N - k_min]."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("sweep_sample takes one row; use sweep_batch for a batch")
    return sweep_batch(model, inputs, k_min, tokens)[0]


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
    selection: str = "random"  # "random" (seeded subset) or "first" (the first N rows: the authors' protocol)
    warning: str | None = None  # set when the samples come from the test split
    accuracy_samples: int = 0  # how many samples the accuracy sweep scored
    accuracy_ids: list[str] = field(default_factory=list)
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


@dataclass(frozen=True)
class Sweep:
    """How the KL sweep runs: K from ``k_min`` to N-1, on ``samples`` samples drawn with ``seed`` (or the
    ``first`` N documents: the authors' protocol), averaged over ``tokens`` teacher-forced output tokens,
    ``batch_size`` samples per padded prefill; ``accuracy``: also score that many samples at every K."""

    k_min: int = 5
    samples: int = 20
    seed: int = 0
    tokens: int = 1
    accuracy: int = 0
    first: int | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.samples < 1 or self.tokens < 1 or self.accuracy < 0:
            raise ArgumentError("--samples and --tokens must be at least 1, --accuracy at least 0")
        if self.batch_size < 1:
            raise ArgumentError("--batch-size must be at least 1")
        if self.first is not None and self.first < 1:
            raise ArgumentError(f"--first must be at least 1, got {self.first}")


def calibrate(loaded, task, etas: list[float], sweep: Sweep | None = None, *, split: str | None = None,
              source: str | None = None, progress: Callable[[str, int, int], None] | None = None,
              **settings) -> Calibration:
    """Sweep K over ``sweep.samples`` samples of ``task``'s calibration split and choose K per eta
    (``settings`` change ``sweep``'s fields: ``calibrate(m, task, [0.003], k_min=1, samples=4)``).

    The samples are a random subset drawn with ``seed`` (recorded by id). ``first=N`` takes the first N
    documents instead and may read the test split: the authors' protocol (``lmms_eval --limit 20
    --findk`` on the benchmark itself), for reproduction only; the record carries a warning.
    ``batch_size``: samples per padded stock prefill and tail sweep (the KL of each sample is the same).
    """
    from .env import environment

    sweep = replace(sweep or Sweep(), **settings)
    k_min, samples, seed, tokens = sweep.k_min, sweep.samples, sweep.seed, sweep.tokens
    accuracy, first, batch_size = sweep.accuracy, sweep.first, sweep.batch_size
    n = loaded.num_layers
    if not etas or any(not e > 0 or not math.isfinite(e) for e in etas):
        raise ArgumentError(f"eta must be a finite number > 0, got {', '.join(map(str, etas)) or 'nothing'}")
    check_k(k_min, n, hi=n - 1, what="k_min")
    split = split or task.calibration_split
    warning = None
    if split == task.test_split:
        if first is None:
            raise VTWError(f"calibration must not use the test split ({split}) of {task.name} "
                           "(--split test --first N reproduces the authors' protocol)")
        warning = (f"calibrated on the first {first} documents of the test split of {task.name} (the authors' "
                   "protocol): test numbers on this split are not held out")
    pool = task.open(split, source, seed)
    chosen = pool.first(first) if first is not None else pool.sample(samples, seed)  # seeded subset (recorded)
    data = list(chosen)
    if not data:
        raise VTWError(f"no samples in {task.name}/{split}")
    start = time.perf_counter()
    rows = []
    for first_row in range(0, len(data), batch_size):
        batch = data[first_row:first_row + batch_size]
        inputs = loaded.build_inputs([s.prompt for s in batch], images=[s.images for s in batch],
                                     videos=[s.video for s in batch])
        inputs = teacher_forced(loaded, inputs, tokens)
        rows.append(sweep_batch(loaded.model, inputs, k_min, tokens))
        if progress:
            progress("kl", first_row + len(batch), len(data))
    kl = torch.cat(rows)  # [samples, candidates]
    ks = list(range(k_min, n))
    kl_mean = {k: float(kl[:, j].mean()) for j, k in enumerate(ks)}
    result = Calibration(
        model=loaded.name, dataset=task.name, split=split, seed=seed, samples=len(data),
        sample_ids=[s.id for s in data], k_min=k_min, num_layers=n, tokens=tokens, etas=list(etas),
        chosen={str(e): choose_k(kl_mean, e, n) for e in etas},
        kl={str(k): v for k, v in kl_mean.items()},
        kl_max={str(k): float(kl[:, j].max()) for j, k in enumerate(ks)},
        kl_per_sample={str(k): [float(x) for x in kl[:, j]] for j, k in enumerate(ks)},
        seconds=0.0, env=environment(loaded), selection="first" if first is not None else "random",
        warning=warning,
    )
    if accuracy:
        # the KL samples first, then (when more are asked for) more of the same split, drawn the same way
        if accuracy <= len(data):
            scored = data[:accuracy]
        else:
            rest = pool.exclude(chosen.ids)
            more = rest.first(accuracy - len(data)) if first is not None else rest.sample(accuracy - len(data), seed)
            scored = data + list(more)
        if len(scored) < accuracy:
            raise VTWError(f"--accuracy {accuracy} is more than the {len(scored)} samples of {task.name}/{split}")
        result.accuracy, result.baseline_accuracy = accuracy_sweep(loaded, task, scored, ks, progress)
        result.accuracy_samples, result.accuracy_ids = len(scored), [s.id for s in scored]
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
            out = generate(loaded, inputs, k=k, max_new_tokens=task.max_new_tokens, stop=task.until).answers[0]
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
            "selection": result.selection, "warning": result.warning,
            "dtype": result.env.get("dtype"), "prompt_style": result.env.get("prompt_style"),
            "versions": result.env.get("versions", {}), "source": "vtwctl calibrate",
        })
    return recs
