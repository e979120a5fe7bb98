"""Layouts the family matrix does not reach: sliding windows shorter than the prompt, static caches,
rows without padding but with different vision counts, returned hidden states, and what is refused."""

from __future__ import annotations

import pytest
import torch

from reference import reference_forward, reference_greedy, reference_logits
from tiny import SUPPRESS, model_for, rows_for, sizes, text_positions
from vtwctl.engine.hooks import withdraw
from vtwctl.errors import VTWError
from vtwctl.testing import IMAGE_ID, VIDEO_ID, tiny_inputs, tiny_model

WINDOWED = ["gemma3", "mistral3", "cohere2_vision", "idefics2"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", WINDOWED)
def test_sliding_window_shorter_than_the_prompt(family, impl):
    """Window 6 on prompts of ~30 tokens: layers >= K keep a text-only window measured in original positions."""
    model = model_for(family, impl, sliding_window=6)
    x = tiny_inputs(model, rows_for(family))
    text = text_positions(x)
    wide = model_for(family, impl)  # the same weights with a window longer than the prompt
    with torch.no_grad():
        assert (model(**x).logits[text] - wide(**x).logits[text]).abs().max() > 1e-3  # the window matters
    for k in (0, 3):
        ref = reference_logits(model, x, k)
        with torch.no_grad(), withdraw(model, k):
            out = model(**x).logits
        torch.testing.assert_close(out[text], ref[text], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", ["gemma3", "mistral3"])
def test_sliding_window_generation(family, cache):
    """Decoding past the window with DynamicSlidingWindowLayer / StaticSlidingWindowLayer caches (it used to
    raise NotImplementedError)."""
    model = model_for(family, "sdpa", sliding_window=6)
    x = tiny_inputs(model, rows_for(family))
    ref = reference_greedy(model, x, 2, 6, suppress=SUPPRESS)
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    with torch.no_grad(), withdraw(model, 2):
        out = model.generate(**x, max_new_tokens=6, do_sample=False, suppress_tokens=SUPPRESS, **kw)[:, -6:]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "gemma3", "paligemma"])
def test_static_cache_generation(family, k):
    """generate(cache_implementation="static") prepares 4D masks (a dict for Gemma 3); the engine reads the
    padding from them and writes layers >= K at their own, shorter, positions."""
    model = model_for(family)
    x = tiny_inputs(model, rows_for(family))
    ref = reference_greedy(model, x, k, 5, suppress=SUPPRESS)
    with torch.no_grad(), withdraw(model, k):
        out = model.generate(**x, max_new_tokens=5, do_sample=False, suppress_tokens=SUPPRESS,
                             cache_implementation="static", return_dict_in_generate=True)
    assert torch.equal(out.sequences[:, -5:], ref)
    layers = out.past_key_values.layers
    assert layers[k + 1].keys.shape[-2] == layers[0].keys.shape[-2]  # a static cache keeps its width


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_rows_without_padding_with_different_vision_counts(impl):
    """No padding at all (sdpa gets no stock mask), but rows lose different numbers of vision tokens."""
    model = model_for("llava_next", impl)
    big, small = sizes("llava_next")
    probe = tiny_inputs(model, [{"pre": 3, "post": 2, "image": big}, {"pre": 3, "post": 2, "image": small}])
    n_big, n_small = ((probe["input_ids"] == IMAGE_ID).sum(1)).tolist()
    x = tiny_inputs(model, [{"pre": 3, "post": 2, "image": big}, {"pre": 3, "post": 2 + n_big - n_small,
                                                                  "image": small}])
    assert bool(x["attention_mask"].all()) and n_big != n_small
    text = text_positions(x)
    ref = reference_logits(model, x, 2)
    with torch.no_grad(), withdraw(model, 2):
        out = model(**x).logits
        gen = model.generate(**x, max_new_tokens=4, do_sample=False, suppress_tokens=SUPPRESS)[:, -4:]
    torch.testing.assert_close(out[text], ref[text], atol=1e-4, rtol=1e-4)
    assert torch.equal(gen, reference_greedy(model, x, 2, 4, suppress=SUPPRESS))


@pytest.mark.parametrize("family", ["llava", "qwen3_vl", "gemma3"])
def test_hidden_states_come_back_in_the_stock_layout(family):
    """output_hidden_states: every entry has the stock shape; text positions hold what the masked reference
    computes, withdrawn positions of layers >= K are zero."""
    model = model_for(family)
    x = tiny_inputs(model, rows_for(family))
    k = 2
    text = text_positions(x)
    withdrawn = ((x["input_ids"] == IMAGE_ID) | (x["input_ids"] == VIDEO_ID) | ~x["attention_mask"].bool())
    ref = reference_forward(model, x, k, output_hidden_states=True).hidden_states
    with torch.no_grad(), withdraw(model, k):
        out = model(**x, output_hidden_states=True).hidden_states
    assert len(out) == len(ref)
    for i, (got, want) in enumerate(zip(out, ref)):
        assert got.shape == want.shape
        torch.testing.assert_close(got[text], want[text], atol=1e-4, rtol=1e-4, msg=f"hidden state {i}")
        if i > k:  # outputs of layers >= K
            assert float(got[withdrawn].abs().max()) == 0.0


def test_refusals_are_one_clear_error():
    llama4 = tiny_model("llama4")
    with pytest.raises(VTWError, match="Llama 4 is not supported"):
        with withdraw(llama4, 2):
            pass
    flex = tiny_model("llava", attn_implementation="flex_attention")
    with pytest.raises(VTWError, match="flex_attention"):
        with withdraw(flex, 2):
            pass
    flash = tiny_model("mistral3", sliding_window=6)
    flash.config.get_text_config()._attn_implementation = "flash_attention_2"
    with pytest.raises(VTWError, match="sliding window"):
        with withdraw(flash, 2):
            pass


def test_a_family_without_an_entry_gets_the_generic_adapter():
    """A family the adapters do not list, but whose config names its image token, works unchanged."""
    from vtwctl.engine.families import ADAPTERS, adapter_for

    model = model_for("internvl")
    saved = ADAPTERS.pop("internvl")
    try:
        adapter = adapter_for(model)
        assert adapter.family == "internvl" and not adapter.tested and adapter.model_class is None
        x = tiny_inputs(model, rows_for("internvl"))
        text = text_positions(x)
        ref = reference_logits(model, x, 2)
        with torch.no_grad(), withdraw(model, 2):
            out = model(**x).logits
        torch.testing.assert_close(out[text], ref[text], atol=1e-4, rtol=1e-4)
    finally:
        ADAPTERS["internvl"] = saved
    text_only = tiny_model("llava").model.language_model.config  # a text config: no vision token ids
    with pytest.raises(ValueError, match="names no image/video token id"):
        adapter_for(text_only)


@pytest.mark.slow  # over 30 s: in CI's slow step (-m slow)
def test_a_compiled_model_sees_the_hooks_inside_and_not_after_the_block():
    """torch.compile (dynamo; the eager backend, so no code generation). Dynamo skips module-hook guards by
    default, so a graph compiled before the block would run in place of withdrawal inside it (the stock logits,
    silently): such a wrapper is refused at the block's entry. With the guards on (the user's choice, made
    before compiling) it recompiles inside the block (the masked reference's logits) and after it (stock). A
    graph first traced inside the block is guarded on the hooks there (vtwctl turns the guards on for the
    block only), so after the block it recompiles and gives the stock logits. The setting is left as it was."""
    from tiny import inputs_for

    torch._dynamo.reset()
    default = torch._dynamo.config.skip_nnmodule_hook_guards
    model, x = inputs_for("llava", "sdpa")
    text = text_positions(x)
    ref = reference_logits(model, x, 2)
    try:
        with torch.no_grad():
            stock = model(**x).logits
            compiled = torch.compile(model, backend="eager")
            torch.testing.assert_close(compiled(**x).logits, stock, atol=1e-4, rtol=1e-4)
            with pytest.raises(VTWError, match=r"torch.compile\(LlavaForConditionalGeneration\) exists"):
                with withdraw(model, 2):
                    pass
            del compiled
            torch._dynamo.reset()
            with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):  # the user's choice
                compiled = torch.compile(model, backend="eager")
                before = compiled(**x).logits
                with withdraw(model, 2):
                    inside = compiled(**x).logits
                after = compiled(**x).logits
            torch.testing.assert_close(before, stock, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(inside[text], ref[text], atol=1e-4, rtol=1e-4)
            assert (inside[text] - stock[text]).abs().max() > 1e-3  # withdrawal changed them: the check can fail
            torch.testing.assert_close(after, stock, atol=1e-4, rtol=1e-4)
            del compiled
            torch._dynamo.reset()
            assert torch._dynamo.config.skip_nnmodule_hook_guards == default
            with withdraw(model, 2):  # traced inside the block only
                compiled = torch.compile(model, backend="eager")
                inside = compiled(**x).logits
            assert torch._dynamo.config.skip_nnmodule_hook_guards == default
            after = compiled(**x).logits
            torch.testing.assert_close(inside[text], ref[text], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(after, stock, atol=1e-4, rtol=1e-4)
            del compiled
    finally:
        torch._dynamo.reset()


def test_compiled_parts_of_the_model_are_refused():
    model = model_for("llava")
    with pytest.raises(VTWError, match="OptimizedModule"), withdraw(torch.compile(model, backend="eager"), 2):
        pass
    model._compiled_call = object()  # what generate leaves after compiling a static-cache forward
    try:
        with pytest.raises(VTWError, match="compiled"), withdraw(model, 2):
            pass
    finally:
        del model._compiled_call
    model.model.language_model.compile(backend="eager")
    try:
        with pytest.raises(VTWError, match="Module.compile"), withdraw(model, 2):
            pass
    finally:
        model.model.language_model._compiled_call_impl = None
