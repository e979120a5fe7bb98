"""Attention of each output token to system / vision / instruction / output tokens (Figs. 4-5).

For every generated token and every layer, the attention mass of the query that predicts it (the
last position of the sequence at that step) over each token type, averaged over heads: beta[t, l, type].
It is computed from that single query row and the layer's cached keys (hooks on the attention
modules), never from full attention matrices, so any attention implementation works and memory
stays O(layers x sequence) per step.

Token types follow the paper's Fig. 3: system tokens come before the first vision token, vision
tokens are the image/video tokens, instruction tokens are the rest of the prompt (vision start/end
markers such as Qwen2-VL's count as system/instruction text), output tokens are the ones generated
so far. Under VTW (``k``), layers >= k hold no vision keys: their vision mass is 0 by construction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .engine.compat import rotary_tables
from .engine.families import adapter_for, vision_mask
from .errors import VTWError

TYPES = ("system", "vision", "instruction", "output")


def segment(input_ids: torch.Tensor, vision_ids: list[int], attention_mask: torch.Tensor | None = None,
            visual: bool = True) -> torch.Tensor:
    """Token type (index into TYPES) of every prompt position [B, S]; padding gets -1."""
    ids = input_ids
    vision = vision_mask(ids, vision_ids, visual=visual)
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    big = ids.shape[1]
    first = torch.where(vision, pos, big).min(1).values[:, None]
    types = torch.where(pos < first, 0, 2)
    types = torch.where(vision, 1, types)
    if attention_mask is not None:
        types = torch.where(attention_mask.bool(), types, -1)
    return types


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` [B, H, S, D] with tables [B, S, D] (as the model's apply_rotary_pos_emb)."""
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return x * cos.unsqueeze(1) + torch.cat((-b, a), dim=-1) * sin.unsqueeze(1)


def project(attn, name: str, hidden: torch.Tensor) -> torch.Tensor:
    """Queries (``name`` "q") or keys ("k") of ``hidden`` [B, S, H] as [B, heads, S, D], before rotary.

    As the stock attention modules compute them, including the per-head RMS norm of the families
    that have one (Qwen3, Gemma 3: ``q_norm``/``k_norm``).
    """
    proj = getattr(attn, f"{name}_proj", None)
    if proj is None:
        raise VTWError(f"{type(attn).__name__} has no {name}_proj (e.g. multi-head latent attention): "
                       "its attention scores cannot be computed here")
    b, s, _ = hidden.shape
    x = proj(hidden).view(b, s, -1, attn.head_dim)
    norm = getattr(attn, f"{name}_norm", None)
    if norm is not None:
        x = norm(x)
    return x.transpose(1, 2)


def last_query_attention(attn, hidden_last: torch.Tensor, cos_last: torch.Tensor, sin_last: torch.Tensor,
                         keys: torch.Tensor, mask_row: torch.Tensor | None) -> torch.Tensor:
    """Head-averaged softmax attention of one query row over rotated ``keys``: [B, S].

    ``hidden_last`` [B, 1, H] is the attention module's input at the query position, ``keys``
    [B, Hkv, S, D] the layer's rotated keys, ``mask_row`` the mask row of the query (4D bool or
    additive float, broadcastable to [B, 1, 1, S]) or None.
    """
    q = rotate(project(attn, "q", hidden_last), cos_last, sin_last)
    k = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
    s = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [B, H, 1, S]
    if mask_row is not None:
        mask_row = mask_row[..., -s.shape[-1]:]
        s = s.masked_fill(~mask_row, float("-inf")) if mask_row.dtype == torch.bool else s + mask_row.float()
    return s.softmax(-1).mean(1)[:, 0]


class AttentionRecorder:
    """Hooks on every attention module recording beta per type for the last query of each forward."""

    def __init__(self, model, key_types):
        self.model = model
        self.adapter = adapter_for(model)
        self.layers = self.adapter.text_model(model).layers
        self.key_types = key_types  # callable(layer_idx, num_keys) -> LongTensor [B, num_keys] of type ids
        self.rows: list[torch.Tensor] = []  # per forward: [B, L, 4]
        self.current: dict[int, torch.Tensor] = {}
        self.pending: dict[int, tuple] = {}
        self.handles = []

    def install(self) -> None:
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            self.handles.append(attn.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(attn.register_forward_hook(self._post(i), with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _pre(self, i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            cos, sin = rotary_tables(kwargs["position_embeddings"], self.model.config)
            mask = kwargs.get("attention_mask")
            row = None
            if isinstance(mask, torch.Tensor) and mask.ndim == 4:
                row = mask[:, :, -1:, :]
            elif isinstance(mask, torch.Tensor) and mask.ndim == 2:
                row = mask.bool()[:, None, None, :]
            self.pending[i] = (hidden[:, -1:], cos[:, -1:], sin[:, -1:], row)
        return hook

    def _post(self, i):
        def hook(module, args, kwargs, output):
            hidden, cos, sin, row = self.pending.pop(i)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            keys = cache.layers[module.layer_idx].keys  # [B, Hkv, S, D], rotated
            b = hidden.shape[0]
            probs = last_query_attention(module, hidden, cos, sin, keys, row)  # [B, S]
            types = self.key_types(i, probs.shape[-1]).to(probs.device)
            beta = torch.zeros(b, len(TYPES), device=probs.device)
            beta.scatter_add_(1, types.clamp(min=0), probs * (types >= 0))
            self.current[i] = beta.cpu()
            if i == len(self.layers) - 1:
                self.rows.append(torch.stack([self.current[j] for j in range(len(self.layers))], 1))
                self.current.clear()
        return hook


@torch.no_grad()
def record(loaded, inputs: dict, max_new_tokens: int = 16, k: int | None = None) -> torch.Tensor:
    """beta [B, T, L, 4] for each generated token t (greedy, up to and including the end-of-sequence
    token: nothing past it), layer l and token type (TYPES)."""
    from .engine.hooks import Engine, active
    from .engine.support import carries_visual, check_supported

    model = loaded.model
    visual = carries_visual(inputs)
    prompt_types = segment(inputs["input_ids"], loaded.vision_token_ids, inputs.get("attention_mask"), visual)
    n = loaded.num_layers
    engine = None
    if k is not None and k < n:
        check_supported(model, k)
        engine = Engine(model, k, "keep")

    def key_types(layer: int, num_keys: int) -> torch.Tensor:
        b, s = prompt_types.shape
        full = torch.full((b, num_keys), 3, dtype=torch.long)  # keys past the prompt are outputs
        full[:, : min(s, num_keys)] = prompt_types[:, : min(s, num_keys)].cpu()
        key_map = engine.key_map(layer) if engine is not None else None
        if key_map is not None:
            kv_map = key_map.cpu()[:, :num_keys]  # key slot -> original position (-1: withdrawn)
            orig = torch.full((b, max(int(kv_map.max()) + 1, s)), 3, dtype=torch.long)
            orig[:, :s] = prompt_types.cpu()
            out = torch.full((b, num_keys), -1, dtype=torch.long)
            out[:, : kv_map.shape[1]] = torch.where(kv_map >= 0, orig.gather(1, kv_map.clamp(min=0)), -1)
            return out
        return full

    rec = AttentionRecorder(model, key_types)
    rec.install()
    try:
        ctx = active(model, engine) if engine is not None else contextlib.nullcontext()
        with ctx:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None)
    finally:
        rec.remove()
    beta = torch.stack(rec.rows, 1)  # [B, T, L, 4]
    # in a batch, rows that ended keep being computed (padding) until every row ends: not output tokens
    new = out[:, inputs["input_ids"].shape[1]:].cpu()
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if eos and new.shape[1]:
        is_eos = torch.isin(new, torch.tensor(eos))
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), new.shape[1])  # index of each row's EOS
        past = torch.arange(beta.shape[1])[None] > first[:, None]  # [B, T]
        beta = beta.masked_fill(past[..., None, None], float("nan"))
    return beta


@dataclass
class AttentionReport:
    model: str
    datasets: list[str]
    k: int | None
    sample_ids: list[str]
    beta: torch.Tensor  # [N, T, L, 4]; NaN past each sample's last output token
    env: dict = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)  # output tokens of each sample (its EOS included)

    def _valid(self) -> torch.Tensor:
        return ~torch.isnan(self.beta[..., 0, 0])  # [N, T]

    def by_layer(self) -> list[dict]:
        valid = self._valid()[..., None, None]  # [N, T, 1, 1]
        per = torch.where(valid, self.beta, 0).sum(1) / valid.sum(1).clamp(min=1)  # [N, L, 4]: mean over tokens
        mean, std = per.mean(0), per.std(0, unbiased=False)
        n = per.shape[0]
        return [{"layer": layer, "type": t, "mean": float(mean[layer, j]), "std": float(std[layer, j]), "samples": n}
                for layer in range(per.shape[1]) for j, t in enumerate(TYPES)]

    def by_token(self) -> list[dict]:
        per = self.beta.mean(2)  # [N, T, 4]: averaged over layers (NaN past a sample's end)
        valid = self._valid()  # [N, T]
        rows = []
        for i in range(per.shape[1]):
            vals = per[valid[:, i], i]  # the samples that produced an i-th output token
            if not len(vals):
                continue
            mean, std = vals.mean(0), vals.std(0, unbiased=False)
            rows += [{"output_index": i, "type": t, "mean": float(mean[j]), "std": float(std[j]),
                      "samples": int(len(vals))} for j, t in enumerate(TYPES)]
        return rows

    def title(self) -> str:
        vtw = f", VTW K={self.k}" if self.k is not None else ""
        return f"{self.model}{vtw} on {'+'.join(self.datasets)} ({len(self.sample_ids)} samples)"

    def write(self, out_dir) -> list:
        import csv
        from pathlib import Path

        import numpy as np

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, rows in (("attention_by_layer.csv", self.by_layer()), ("attention_by_token.csv", self.by_token())):
            p = out / name
            with p.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            paths.append(p)
        p = out / "attention_raw.npz"
        np.savez_compressed(p, beta=self.beta.numpy(), types=np.array(TYPES), sample_ids=np.array(self.sample_ids),
                            datasets=np.array(self.datasets), k=-1 if self.k is None else self.k,
                            lengths=np.array(self.lengths or [self.beta.shape[1]] * self.beta.shape[0]))
        paths.append(p)
        from .plots import plot_attention

        paths += plot_attention(self.by_layer(), self.by_token(), out, title=self.title())
        return paths


def attention_stats(loaded, tasks_and_samples: list[tuple], max_new_tokens: int = 16, k: int | None = None,
                    progress=None) -> AttentionReport:
    """beta for each (task, sample) pair, one sample at a time, as an AttentionReport."""
    from .env import environment

    betas, ids, names = [], [], []
    for i, (task, s) in enumerate(tasks_and_samples):
        inputs = loaded.sample_inputs(s)
        betas.append(record(loaded, inputs, max_new_tokens, k)[0])
        ids.append(s.id)
        names.append(task)
        if progress:
            progress(i + 1, len(tasks_and_samples))
    betas = [b[~torch.isnan(b[:, 0, 0])] for b in betas]  # nothing past the end of the answer
    lengths = [b.shape[0] for b in betas]
    width = max(lengths)
    padded = [torch.cat([b, b.new_full((width - b.shape[0], *b.shape[1:]), float("nan"))]) for b in betas]
    return AttentionReport(model=loaded.name, datasets=sorted(set(names)), k=k, sample_ids=ids,
                           beta=torch.stack(padded), env=environment(loaded), lengths=lengths)
