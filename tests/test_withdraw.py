"""The engine against an independent masked-attention reference, on tiny models of every family."""

from __future__ import annotations

import pytest
import torch

from reference import cache_kwargs, extend, reference_greedy, reference_logits
from vtwctl.measure import cache_of
from vtwctl.testing import FAMILIES, IMAGE_ID, tiny_inputs, tiny_model
from vtwctl.withdraw import withdraw

QWEN = ("qwen2_vl", "qwen2_5_vl")
VIDEO = ("video_llava", "llava_onevision", "qwen2_vl")
SUPPRESS = list(range(250, 256))  # never generate vision/marker ids


def rows_for(family: str, batch: bool = True) -> list[dict]:
    big, small = ((8, 8), (4, 4)) if family in QWEN else ((32, 64), (32, 32))
    rows = [{"pre": 3, "post": 5, "image": big}]
    if batch:
        rows += [{"pre": 4, "post": 3, "image": small}, {"pre": 2, "post": 6}]
        if family in VIDEO:
            rows.append({"pre": 2, "post": 3, "video": True})
    return rows


def text_positions(x: dict) -> torch.Tensor:
    return (x["input_ids"] < 250) & x["attention_mask"].bool()


_models: dict = {}


def model_for(family: str, impl: str):
    key = (family, impl)
    if key not in _models:
        _models[key] = tiny_model(family, attn_implementation=impl)
    return _models[key]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_masked_reference(family, impl):
    model = model_for(family, impl)
    for batch in (False, True):
        x = tiny_inputs(model, rows_for(family, batch))
        text = text_positions(x)
        with torch.no_grad():
            stock = model(**x).logits
        for k in (0, 2, 4):
            ref = reference_logits(model, x, k)
            with torch.no_grad(), withdraw(model, k):
                out = model(**x).logits
            assert out.shape == stock.shape
            assert torch.allclose(out[text], ref[text], atol=1e-4), (family, impl, batch, k)
            # the reference really differs from the stock model: the comparison can fail
            assert (stock[text] - ref[text]).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_full_recompute(family):
    model = model_for(family, "sdpa")
    x = tiny_inputs(model, rows_for(family))
    ref = reference_greedy(model, x, 3, 10, suppress=SUPPRESS)
    with torch.no_grad(), withdraw(model, 3):
        cached = model.generate(**x, max_new_tokens=10, do_sample=False, suppress_tokens=SUPPRESS)[:, -10:]
        uncached = model.generate(**x, max_new_tokens=10, do_sample=False, suppress_tokens=SUPPRESS,
                                  use_cache=False)[:, -10:]
    assert torch.equal(cached, ref)
    assert torch.equal(uncached, ref)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_greedy_generation_eager_and_sdpa_llava_next(impl):
    model = model_for("llava_next", impl)
    x = tiny_inputs(model, rows_for("llava_next"))
    ref = reference_greedy(model, x, 2, 12, suppress=SUPPRESS)
    with torch.no_grad(), withdraw(model, 2):
        out = model.generate(**x, max_new_tokens=12, do_sample=False, suppress_tokens=SUPPRESS)[:, -12:]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_k_equal_n_is_the_stock_model(family):
    model = model_for(family, "sdpa")
    n = len(model.model.language_model.layers)
    x = tiny_inputs(model, rows_for(family))
    with torch.no_grad():
        stock = model(**x).logits
        g_stock = model.generate(**x, max_new_tokens=6, do_sample=False, suppress_tokens=SUPPRESS)
        with withdraw(model, n):
            same = model(**x).logits
            g_same = model.generate(**x, max_new_tokens=6, do_sample=False, suppress_tokens=SUPPRESS)
    assert torch.equal(stock, same)
    assert torch.equal(g_stock, g_same)


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_kv_cache_of_deep_layers_holds_text_only(family):
    model = model_for(family, "sdpa")
    x = tiny_inputs(model, rows_for(family))
    k, steps = 2, 5
    with torch.no_grad(), withdraw(model, k):
        out = model.generate(**x, max_new_tokens=steps, do_sample=False, suppress_tokens=SUPPRESS,
                             return_dict_in_generate=True)
    cache = out.past_key_values
    s = x["input_ids"].shape[1]
    vision = (x["input_ids"] >= 250) & (x["input_ids"] <= 251)
    text_max = int((~vision).sum(1).max())
    n = len(model.model.language_model.layers)
    for i in range(n):
        length = cache.layers[i].keys.shape[-2]
        expected = s + steps - 1 if i < k else text_max + steps - 1
        assert length == expected, (i, length, expected)


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "video_llava"])
def test_batched_equals_rows_alone(family):
    model = model_for(family, "sdpa")
    rows = rows_for(family)
    x = tiny_inputs(model, rows)
    with torch.no_grad(), withdraw(model, 3):
        batched = model(**x).logits[:, -1]
        g_batched = model.generate(**x, max_new_tokens=8, do_sample=False, suppress_tokens=SUPPRESS)[:, -8:]
        for i in range(len(rows)):
            xi = _row(x, i, model)  # the same tokens and pixels, unpadded
            alone = model(**xi).logits[:, -1]
            assert torch.allclose(alone, batched[i : i + 1], atol=1e-4), (family, i)
            g_alone = model.generate(**xi, max_new_tokens=8, do_sample=False, suppress_tokens=SUPPRESS)[:, -8:]
            assert torch.equal(g_alone, g_batched[i : i + 1]), (family, i)


def _row(x: dict, i: int, model) -> dict:
    """Row ``i`` of a tiny batch on its own (padding dropped, its own pixels only)."""
    keep = x["attention_mask"][i].bool()
    ids = x["input_ids"][i][keep][None]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "mm_token_type_ids" in x:
        out["mm_token_type_ids"] = x["mm_token_type_ids"][i][keep][None]
    # which images/videos belong to row i: count vision blocks in earlier rows
    def owned(token):
        counts = [int((r.diff(prepend=torch.tensor([0])) == 1).sum())
                  for r in (x["input_ids"] == token).long()]
        start = sum(counts[:i])
        return start, start + counts[i]
    family = model.config.model_type
    img0, img1 = owned(IMAGE_ID)
    vid0, vid1 = owned(IMAGE_ID + 1)
    for key, val in x.items():
        if key in out or key in ("input_ids", "attention_mask"):
            continue
        lo, hi = (vid0, vid1) if "video" in key else (img0, img1)
        if hi == lo:
            continue
        if family in QWEN and key in ("pixel_values", "pixel_values_videos"):
            grid = x["image_grid_thw" if key == "pixel_values" else "video_grid_thw"]
            sizes = grid.prod(-1)
            a, b = int(sizes[:lo].sum()), int(sizes[:hi].sum())
            out[key] = val[a:b]
        else:
            out[key] = val[lo:hi]
    return out


def test_right_padding_matches_reference():
    model = model_for("llava_next", "eager")
    x = tiny_inputs(model, rows_for("llava_next"), padding="right")
    text = text_positions(x)
    ref = reference_logits(model, x, 2)
    with torch.no_grad(), withdraw(model, 2):
        out = model(**x).logits
    assert torch.allclose(out[text], ref[text], atol=1e-4)


def test_sampling_runs_and_is_seeded():
    model = model_for("llava", "sdpa")
    x = tiny_inputs(model, rows_for("llava"))
    with torch.no_grad(), withdraw(model, 2):
        torch.manual_seed(7)
        a = model.generate(**x, max_new_tokens=6, do_sample=True, suppress_tokens=SUPPRESS)
        torch.manual_seed(7)
        b = model.generate(**x, max_new_tokens=6, do_sample=True, suppress_tokens=SUPPRESS)
    assert torch.equal(a, b)
    assert a.shape == (x["input_ids"].shape[0], x["input_ids"].shape[1] + 6)


def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_model_is_restored_also_on_error():
    model = model_for("llava", "sdpa")
    before = _hooks(model)
    x = tiny_inputs(model, rows_for("llava"))
    with torch.no_grad():
        stock = model(**x).logits
    with pytest.raises(KeyError):
        with withdraw(model, 2):
            assert _hooks(model) > before
            raise KeyError("boom")
    assert _hooks(model) == before
    assert not hasattr(model, "_vtw_active")
    with torch.no_grad():
        assert torch.equal(model(**x).logits, stock)


def test_k_out_of_range_and_nesting():
    model = model_for("llava", "sdpa")
    n = len(model.model.language_model.layers)
    for bad in (-1, n + 1, 2.5, "3"):
        with pytest.raises(ValueError, match=f"0..{n}"):
            with withdraw(model, bad):
                pass
    with withdraw(model, 1):
        with pytest.raises(RuntimeError):
            with withdraw(model, 2):
                pass


def test_cache_filled_outside_block_is_refused():
    model = model_for("llava", "sdpa")
    x = tiny_inputs(model, rows_for("llava", batch=False))
    with torch.no_grad():
        out = model(**x, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        with withdraw(model, 2), pytest.raises(RuntimeError, match="outside"):
            model(input_ids=nxt, attention_mask=extend(x, nxt)["attention_mask"], **cache_kwargs(model, cache_of(out)))


@pytest.mark.parametrize("family,batch", [("llava", True), ("llava_next", True), ("qwen2_vl", False),
                                          ("qwen2_5_vl", False)])
def test_rearrange_positions_match_renumbered_reference(family, batch):
    model = model_for(family, "sdpa")
    x = tiny_inputs(model, rows_for(family, batch))
    text = text_positions(x)
    ref = reference_logits(model, x, 2, rearrange=True)
    keep = reference_logits(model, x, 2)
    with torch.no_grad(), withdraw(model, 2, positions="rearrange"):
        out = model(**x).logits
    assert torch.allclose(out[text], ref[text], atol=2e-5)
    assert (keep[text] - ref[text]).abs().max() > 2e-4  # the two variants differ by more than the tolerance
    g_ref = reference_greedy(model, x, 2, 8, suppress=SUPPRESS, rearrange=True)
    with torch.no_grad(), withdraw(model, 2, positions="rearrange"):
        g = model.generate(**x, max_new_tokens=8, do_sample=False, suppress_tokens=SUPPRESS)[:, -8:]
    assert torch.equal(g, g_ref)
