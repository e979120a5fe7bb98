"""FastV on the engine against a reference built from eager attention maps."""

from __future__ import annotations

import pytest
import torch

from reference import reference_logits
from vtwctl.errors import VTWError
from vtwctl.fastv import fastv
from vtwctl.testing import IMAGE_ID, tiny_inputs, tiny_model


def reference_drop(model, x, k, ratio):
    """Vision tokens FastV drops, from output_attentions of the eager model (independent of fastv.py)."""
    with torch.no_grad():
        att = model(**x, output_attentions=True).attentions[k - 1]  # [B, H, S, S]
    row = att[:, :, -1, :].mean(1)
    vision = x["input_ids"] == IMAGE_ID
    drop = torch.zeros_like(vision)
    for b in range(vision.shape[0]):
        idx = vision[b].nonzero().squeeze(1)
        n = int(round(len(idx) * ratio))
        order = row[b, idx].argsort()
        drop[b, idx[order[:n]]] = True
    return drop


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "qwen3_vl", "gemma3"])
def test_fastv_matches_attention_map_reference(family, impl):
    """Also on QK-norm attention (Qwen3, Gemma 3), Gemma 3's bidirectional image blocks and Qwen3-VL's
    deepstack features, which kept vision tokens receive after layer k (3 levels, k = 2)."""
    model = tiny_model(family, attn_implementation=impl)
    eager = tiny_model(family, attn_implementation="eager")
    image = (8, 8) if family.startswith("qwen") else (32, 64)
    rows = [{"pre": 3, "post": 5, "image": image}, {"pre": 4, "post": 3}]
    x = tiny_inputs(model, rows)
    drop = reference_drop(eager, x, 2, 0.5)
    assert int(drop[0].sum()) > 0 and int(drop[1].sum()) == 0
    ref = reference_logits(model, x, 2, drop=drop)
    text = (x["input_ids"] < 250) & x["attention_mask"].bool()
    with torch.no_grad(), fastv(model, k=2, ratio=0.5):
        out = model(**x).logits
        gen = model.generate(**x, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                             suppress_tokens=list(range(250, 256)))
    assert torch.allclose(out[text], ref[text], atol=1e-4)
    # layers >= k cache the text tokens and the kept half of the vision tokens
    cache = gen.past_key_values
    s = x["input_ids"].shape[1]
    assert cache.layers[0].keys.shape[-2] == s + 3
    kept = (x["attention_mask"].bool() & ((x["input_ids"] != IMAGE_ID) | ~drop)).sum(1).max()  # padding leaves too
    assert cache.layers[3].keys.shape[-2] == int(kept) + 3


def test_fastv_ratio_zero_is_stock():
    model = tiny_model("llava")
    x = tiny_inputs(model)
    with torch.no_grad():
        stock = model(**x).logits
        with fastv(model, k=2, ratio=0.0):
            same = model(**x).logits
    assert torch.equal(stock, same)
    with pytest.raises(VTWError, match="1..6"):
        with fastv(model, k=0):
            pass
