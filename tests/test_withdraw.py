"""The engine against an independent masked-attention reference, on tiny models of every family.

Every family runs a padded batch with rows of different vision-token counts, a text-only row and
(where the family takes them) a video row, in eager and sdpa attention, forward and cached greedy
generation. The reference (tests/reference.py) is the stock forward with vision keys hidden from
layers >= K, so a family-specific layout (sliding windows, image blocks, prefix-LM, deepstack,
M-RoPE) is whatever the stock model does.
"""

from __future__ import annotations

import pytest
import torch

from reference import cache_kwargs, extend, reference_greedy, reference_logits
from tiny import SUPPRESS, impls, inputs_for, model_for, row_alone, rows_for, text_positions
from vtwctl.engine.hooks import Engine, active, withdraw
from vtwctl.errors import VTWError
from vtwctl.measure import cache_of
from vtwctl.testing import IMAGE_ID, VIDEO_ID, WITHDRAWABLE, tiny_inputs

# Default run: every family in its primary attention implementation, and eager attention for families
# whose masks differ in structure; the rest of the family x implementation matrix is marked slow.
EAGER_TOO = ("llava_next", "qwen2_vl", "qwen3_vl", "gemma3", "paligemma", "chameleon", "mistral3")
MATRIX = [pytest.param(f, impl, marks=() if impl == impls(f)[-1] or f in EAGER_TOO else pytest.mark.slow)
          for f in WITHDRAWABLE for impl in impls(f)]


@pytest.mark.parametrize("family,impl", MATRIX)
def test_logits_match_masked_reference(family, impl):
    model, x = inputs_for(family, impl)
    text = text_positions(x)
    with torch.no_grad():
        stock = model(**x).logits
    for k in (0, 3):
        ref = reference_logits(model, x, k)
        with torch.no_grad(), withdraw(model, k):
            out = model(**x).logits
        assert out.shape == stock.shape
        torch.testing.assert_close(out[text], ref[text], atol=1e-4, rtol=1e-4, msg=f"{family} {impl} K={k}")
        # the reference really differs from the stock model: the comparison can fail
        assert (stock[text] - ref[text]).abs().max() > 1e-3


@pytest.mark.parametrize("family", WITHDRAWABLE)
def test_cached_greedy_generation_matches_full_recompute(family):
    model, x = inputs_for(family, impls(family)[-1])
    ref = reference_greedy(model, x, 2, 4, suppress=SUPPRESS)
    with torch.no_grad(), withdraw(model, 2):
        cached = model.generate(**x, max_new_tokens=4, do_sample=False, suppress_tokens=SUPPRESS)[:, -4:]
    assert torch.equal(cached, ref)


@pytest.mark.slow
@pytest.mark.parametrize("family,impl", [(f, i) for f in WITHDRAWABLE for i in impls(f)])
def test_longer_generation_with_and_without_cache(family, impl):
    model, x = inputs_for(family, impl)
    ref = reference_greedy(model, x, 3, 8, suppress=SUPPRESS)
    with torch.no_grad(), withdraw(model, 3):
        cached = model.generate(**x, max_new_tokens=8, do_sample=False, suppress_tokens=SUPPRESS)[:, -8:]
        uncached = model.generate(**x, max_new_tokens=8, do_sample=False, suppress_tokens=SUPPRESS,
                                  use_cache=False)[:, -8:]
    assert torch.equal(cached, ref)
    assert torch.equal(uncached, ref)


@pytest.mark.parametrize("family,impl", [("llava_next", "eager"), ("qwen2_vl", "sdpa"), ("gemma3", "sdpa"),
                                         ("paligemma", "eager")])
def test_greedy_generation_at_k0(family, impl):
    """K = 0 (no layer sees a vision token) decodes like the reference; it used to raise 'filled outside'."""
    model, x = inputs_for(family, impl)
    ref = reference_greedy(model, x, 0, 5, suppress=SUPPRESS)
    with torch.no_grad(), withdraw(model, 0):
        out = model.generate(**x, max_new_tokens=5, do_sample=False, suppress_tokens=SUPPRESS)[:, -5:]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3", "chameleon"])
def test_k_equal_n_is_the_stock_model(family):
    model, x = inputs_for(family)
    n = len(model.get_decoder().layers) if family != "chameleon" else len(model.model.layers)
    with torch.no_grad():
        stock = model(**x).logits
        g_stock = model.generate(**x, max_new_tokens=6, do_sample=False, suppress_tokens=SUPPRESS)
        with withdraw(model, n):
            same = model(**x).logits
            g_same = model.generate(**x, max_new_tokens=6, do_sample=False, suppress_tokens=SUPPRESS)
    assert torch.equal(stock, same)
    assert torch.equal(g_stock, g_same)


def _kv_rows(family, rows, k, steps):
    model = model_for(family)
    x = tiny_inputs(model, rows)
    engine = Engine(model, k, "keep")
    with torch.no_grad(), active(model, engine):
        out = model.generate(**x, max_new_tokens=steps, do_sample=False, suppress_tokens=SUPPRESS,
                             return_dict_in_generate=True)
        per_row = (engine.streams[out.past_key_values].kv_map >= 0).sum(1)
    return model, x, out.past_key_values, per_row


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "gemma3"])
def test_kv_cache_of_deep_layers_holds_text_only_per_row(family):
    k, steps = 2, 5
    model, x, cache, per_row = _kv_rows(family, rows_for(family), k, steps)
    s = x["input_ids"].shape[1]
    vision = (x["input_ids"] == IMAGE_ID) | (x["input_ids"] == VIDEO_ID)
    text = (x["attention_mask"].bool() & ~vision).sum(1)  # per row: text tokens (markers too), padding excluded
    n = len(cache.layers)
    for i in range(n):
        length = cache.layers[i].keys.shape[-2]
        expected = s + steps - 1 if i < k else int(text.max()) + steps - 1
        assert length == expected, (i, length, expected)
    assert per_row.tolist() == (text + steps - 1).tolist()


def test_padding_is_withdrawn_in_a_mixed_batch():
    """An image row and a text-only row of 9 text tokens each: layers >= K cache 9 keys (+ decoded), not 25."""
    k, steps = 2, 3
    model, x, cache, per_row = _kv_rows("llava", [{"pre": 3, "post": 5, "image": True}, {"pre": 3, "post": 5}],
                                        k, steps)
    assert x["input_ids"].shape[1] == 9 + 16  # 16 vision tokens; the text-only row has 16 padding slots
    assert cache.layers[0].keys.shape[-2] == 25 + steps - 1
    assert cache.layers[k].keys.shape[-2] == 9 + steps - 1
    assert per_row.tolist() == [9 + steps - 1] * 2


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", pytest.param("video_llava", marks=pytest.mark.slow),
                                    "paligemma", "gemma3"])
def test_batched_equals_rows_alone(family):
    model, x = inputs_for(family)
    rows = rows_for(family)
    with torch.no_grad(), withdraw(model, 3):
        batched = model(**x).logits[:, -1]
        g_batched = model.generate(**x, max_new_tokens=4, do_sample=False, suppress_tokens=SUPPRESS)[:, -4:]
        for i in range(len(rows)):
            xi = row_alone(x, i)  # the same tokens and pixels, unpadded
            alone = model(**xi).logits[:, -1]
            torch.testing.assert_close(alone, batched[i : i + 1], atol=1e-4, rtol=1e-4)
            g_alone = model.generate(**xi, max_new_tokens=4, do_sample=False, suppress_tokens=SUPPRESS)[:, -4:]
            assert torch.equal(g_alone, g_batched[i : i + 1]), (family, i)


def test_right_padding_matches_reference():
    model = model_for("llava_next", "eager")
    x = tiny_inputs(model, rows_for("llava_next"), padding="right")
    text = text_positions(x)
    ref = reference_logits(model, x, 2)
    with torch.no_grad(), withdraw(model, 2):
        out = model(**x).logits
    torch.testing.assert_close(out[text], ref[text], atol=1e-4, rtol=1e-4)


def test_sampling_runs_and_is_seeded():
    model, x = inputs_for("llava")
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
    model, x = inputs_for("llava")
    before = _hooks(model)
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
    model = model_for("llava")
    n = len(model.model.language_model.layers)
    for bad in (-1, n + 1, 2.5, "3", True):
        with pytest.raises(VTWError, match=f"0..{n}"):
            with withdraw(model, bad):
                pass
    with withdraw(model, 1):
        with pytest.raises(RuntimeError):
            with withdraw(model, 2):
                pass


def test_cache_filled_outside_block_is_refused():
    model, x = inputs_for("llava", batch=False)
    with torch.no_grad():
        out = model(**x, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        with withdraw(model, 2), pytest.raises(RuntimeError, match="outside"):
            model(input_ids=nxt, attention_mask=extend(x, nxt)["attention_mask"], **cache_kwargs(model, cache_of(out)))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_prompt_ending_with_a_vision_token_is_refused(family):
    model = model_for(family)
    x = tiny_inputs(model, [{"pre": 3, "post": 0, "image": True}])
    if family == "qwen2_vl":  # drop the closing marker, so the prompt ends with the image
        x = {key: (val[:, :-1] if key in ("input_ids", "attention_mask", "mm_token_type_ids") else val)
             for key, val in x.items()}
    assert int(x["input_ids"][0, -1]) == IMAGE_ID
    with torch.no_grad(), withdraw(model, 2), pytest.raises(VTWError, match="ends with a vision token"):
        model.generate(**x, max_new_tokens=2)


@pytest.mark.parametrize("family,batch", [("llava", True), ("llava_next", True), ("qwen2_vl", False),
                                          pytest.param("qwen2_5_vl", False, marks=pytest.mark.slow), ("gemma3", True),
                                          ("qwen3_vl", False)])
def test_rearrange_positions_match_renumbered_reference(family, batch):
    model, x = inputs_for(family, batch=batch)
    text = text_positions(x)
    ref = reference_logits(model, x, 2, rearrange=True)
    keep = reference_logits(model, x, 2)
    with torch.no_grad(), withdraw(model, 2, positions="rearrange"):
        out = model(**x).logits
    torch.testing.assert_close(out[text], ref[text], atol=2e-5, rtol=1e-4)
    assert (keep[text] - ref[text]).abs().max() > 2e-4  # the two variants differ by more than the tolerance
    g_ref = reference_greedy(model, x, 2, 4, suppress=SUPPRESS, rearrange=True)
    with torch.no_grad(), withdraw(model, 2, positions="rearrange"):
        g = model.generate(**x, max_new_tokens=4, do_sample=False, suppress_tokens=SUPPRESS)[:, -4:]
    assert torch.equal(g, g_ref)


@pytest.mark.parametrize("family", ["llava", "llava_next"])  # (stock Qwen2-VL needs cache positions for this)
def test_forward_without_a_cache_argument_then_a_decode_step(family):
    """model(**x, use_cache=True) lets the language model create its cache inside the call; the next step
    on that cache must continue the withdrawal (it once raised 'filled outside the block')."""
    model, x = inputs_for(family)
    with torch.no_grad(), withdraw(model, 2):
        out = model(**x, use_cache=True)
        nxt = out.logits[:, -1:].index_fill(-1, torch.tensor(SUPPRESS), float("-inf")).argmax(-1)  # no vision ids
        step = model(input_ids=nxt, attention_mask=extend(x, nxt)["attention_mask"], use_cache=True,
                     **cache_kwargs(model, cache_of(out))).logits[:, -1]
    want = reference_logits(model, extend(x, nxt), 2)[:, -1]
    torch.testing.assert_close(step, want, atol=1e-4, rtol=1e-4)


def _host_reads(fn) -> int:
    """How many times ``fn`` reads a tensor's value on the host (bool/int/float/item/tolist: a device sync)."""
    counts = [0]
    names = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(orig):
        def f(self, *a, **k):
            counts[0] += 1
            return orig(self, *a, **k)
        return f

    try:
        for n, orig in saved.items():
            setattr(torch.Tensor, n, wrap(orig))
        fn()
    finally:
        for n, orig in saved.items():
            setattr(torch.Tensor, n, orig)
    return counts[0]


@pytest.mark.parametrize("impl,extra", [("eager", 0), ("sdpa", 1)])
def test_a_decode_step_adds_at_most_the_sdpa_mask_check(impl, extra):
    """Issue 19: no host-device synchronisation per decode step from the engine, except sdpa's one check
    whether the step's mask is plain causal (which the stock mask code makes too). Counted against the
    stock model's own decode step on the same cache length."""
    model, x = inputs_for("llava", impl)

    def step(k):
        with torch.no_grad(), withdraw(model, k):
            out = model(**x, use_cache=True)
            nxt = out.logits[:, -1:].index_fill(-1, torch.tensor(SUPPRESS), float("-inf")).argmax(-1)
            kw = dict(input_ids=nxt, attention_mask=extend(x, nxt)["attention_mask"], use_cache=True,
                      **cache_kwargs(model, cache_of(out)))
            return _host_reads(lambda: model(**kw))

    n = len(model.model.language_model.layers)
    stock, vtw = step(n), step(2)
    assert vtw - stock <= extra, (stock, vtw)
