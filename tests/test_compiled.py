"""The compiled fast path (vtwctl.engine.compiled) against the masked reference and the stock model.

Every step's logits are compared with the reference recomputing the whole sequence (tests/reference.py,
which shares no code with vtwctl), on padded batches with a text-only row; K = N against the stock
model's own generate. Compilation is checked with dynamo (fullgraph, one graph, no break) on the eager
backend in the default suite and with inductor under ``-m slow``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from reference import extend, reference_logits
from tiny import SUPPRESS, model_for, rows_for
from vtwctl.engine.compiled import FAMILIES, CompiledDecoder
from vtwctl.errors import VTWError
from vtwctl.testing import tiny_inputs

STEPS = 5
DEFAULT = ["llava", "llava_next", "gemma3", "qwen2_vl", "idefics3", "internvl", "mistral3", "cohere2_vision"]
KEEP = [i for i in range(256) if i not in SUPPRESS]


def _n(model) -> int:
    return model.config.get_text_config().num_hidden_layers


def _check_against_reference(model, x, k, dec):
    """Each step's logits equal the reference's at the last position; the tokens are its greedy tokens."""
    state = dec.prefill(x, STEPS)
    cur, tokens = x, []
    for step in range(STEPS):
        ref = reference_logits(model, cur, k)[:, -1]
        torch.testing.assert_close(state.logits[:, KEEP], ref[:, KEEP].float(), atol=1e-4, rtol=1e-4)
        ref[:, SUPPRESS] = float("-inf")
        assert torch.equal(state.token[:, 0], ref.argmax(-1)), f"step {step}"
        tokens.append(state.token)
        cur = extend(cur, state.token, model.config.model_type)
        if step < STEPS - 1:
            dec.step(state)
    return torch.cat(tokens, 1)


@pytest.mark.parametrize("family", DEFAULT)
def test_steps_equal_the_masked_reference(family):
    model = model_for(family)
    x = tiny_inputs(model, rows_for(family))
    assert not bool(x["attention_mask"].all())  # padded: a text-only row among image rows
    n = _n(model)
    outs = {}
    for k in (0, 2, n):
        outs[k] = _check_against_reference(model, x, k, CompiledDecoder(model, k, compile=False,
                                                                        suppress_tokens=SUPPRESS))
    with torch.no_grad():  # K = N is the stock model: its own generate, dynamic cache
        stock = model.generate(**x, max_new_tokens=STEPS, do_sample=False, suppress_tokens=SUPPRESS)[:, -STEPS:]
    assert torch.equal(outs[n], stock)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(DEFAULT)))
def test_every_verified_family(family):
    model = model_for(family, "eager" if family == "got_ocr2" else "sdpa")
    x = tiny_inputs(model, rows_for(family))
    for k in (0, 3):
        _check_against_reference(model, x, k, CompiledDecoder(model, k, compile=False, suppress_tokens=SUPPRESS))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_eager_attention_too(impl):
    model = model_for("llava_next", impl)
    x = tiny_inputs(model, rows_for("llava_next"))
    _check_against_reference(model, x, 2, CompiledDecoder(model, 2, compile=False, suppress_tokens=SUPPRESS))


@pytest.mark.parametrize("family", ["gemma3", "mistral3"])
def test_sliding_window_shorter_than_the_prompt(family):
    """Window 6: the decode step's window is measured in original positions, in both layer groups."""
    model = model_for(family, "sdpa", sliding_window=6)
    x = tiny_inputs(model, rows_for(family))
    _check_against_reference(model, x, 2, CompiledDecoder(model, 2, compile=False, suppress_tokens=SUPPRESS))


@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen2_vl"])
def test_compiled_step_is_one_graph_and_equals_the_eager_step(family):
    """dynamo traces the whole step (fullgraph: a host read or a hook would break it); same tokens and logits."""
    model = model_for(family)
    x = tiny_inputs(model, rows_for(family))
    plain = CompiledDecoder(model, 2, compile=False, suppress_tokens=SUPPRESS)
    fast = CompiledDecoder(model, 2, compile=True, backend="eager", suppress_tokens=SUPPRESS)
    a, b = plain.prefill(x, STEPS), fast.prefill(x, STEPS)
    for _ in range(STEPS - 1):
        assert torch.equal(plain.step(a), fast.step(b))
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    state = plain.prefill(x, 2)
    explained = torch._dynamo.explain(plain._decode_step)(state.token, state.pos, state.n_full, state.n_text,
                                                          state.maps, state.cache)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_a_model_that_recorded_hidden_states_still_compiles():
    """output_hidden_states installs transformers' capturing hooks on the layers (a ContextVar dynamo cannot
    trace); the compiled step still traces whole, and the model records hidden states afterwards."""
    from vtwctl.testing import tiny_model

    model = tiny_model("llava", attn_implementation="sdpa")
    x = tiny_inputs(model, rows_for("llava"))
    with torch.no_grad():
        before = model(**x, output_hidden_states=True).hidden_states
    plain = CompiledDecoder(model, 2, compile=False).generate(x, 4)
    fast = CompiledDecoder(model, 2, compile=True, backend="eager").generate(x, 4)
    assert torch.equal(plain, fast)
    with torch.no_grad():
        after = model(**x, output_hidden_states=True).hidden_states
    assert len(after) == len(before) == _n(model) + 1
    torch.testing.assert_close(after[-1], before[-1])


@pytest.mark.slow
def test_inductor_step_equals_the_eager_step():
    model = model_for("llava")
    x = tiny_inputs(model, rows_for("llava"))
    plain = CompiledDecoder(model, 2, compile=False)
    fast = CompiledDecoder(model, 2)  # inductor
    a, b = plain.prefill(x, 4), fast.prefill(x, 4)
    for _ in range(3):
        assert torch.equal(plain.step(a), fast.step(b))
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)


def test_static_buffers_are_sized_per_layer_group():
    """Layers < K hold the prompt, layers >= K only the kept tokens, each + max_new_tokens, rounded to bucket."""
    model = model_for("llava_next")
    x = tiny_inputs(model, rows_for("llava_next"))
    s = x["input_ids"].shape[1]
    vision = (x["input_ids"] >= 250) & x["attention_mask"].bool()
    kept = int((x["attention_mask"].bool() & ~vision).sum(1).max())
    assert kept < s - 10
    for bucket in (1, 16):
        state = CompiledDecoder(model, 2, compile=False, bucket=bucket).prefill(x, 7)
        slots = [layer.keys.shape[-2] for layer in state.cache.layers]
        full, text = (-(-v // bucket) * bucket for v in (s + 7, kept + 7))
        assert slots == [full] * 2 + [text] * (len(slots) - 2)
        assert state.kept == kept and state.prompt_len == s


def test_k0_masks_layer_zero_and_k_n_withdraws_nothing():
    model = model_for("llava")
    x = tiny_inputs(model, rows_for("llava"))
    vision = (x["input_ids"] >= 250) & x["attention_mask"].bool()
    s0 = CompiledDecoder(model, 0, compile=False).prefill(x, 3)
    assert s0.maps["masked"][:, : vision.shape[1]][vision].eq(-1).all()  # withdrawn keys hidden from layer 0
    assert set(s0.maps) == {"stock", "masked", "text"}
    sn = CompiledDecoder(model, _n(model), compile=False).prefill(x, 3)
    assert set(sn.maps) == {"stock"} and sn.kept == 0


def test_eos_ends_rows_and_the_loop():
    """A row that produced eos repeats it; the loop stops once every row has (here: as soon as the last one)."""
    model = model_for("llava")
    x = tiny_inputs(model, rows_for("llava"))
    dec = CompiledDecoder(model, 2, compile=False, suppress_tokens=SUPPRESS)
    free = dec.generate(x, 6)
    eos = int(free[0, 1])
    first = [int(h[0]) if len(h) else None for h in ((r == eos).nonzero()[:, 0] for r in free)]
    length = max(first) + 1 if all(f is not None for f in first) else 6
    out = dec.generate(x, 6, eos_token_id=eos)
    assert out.shape[1] == length
    for r, f in enumerate(first):
        end = length - 1 if f is None else f
        assert torch.equal(out[r, : end + 1], free[r, : end + 1])
        assert bool((out[r, end + 1 :] == eos).all())


def test_refusals():
    model = model_for("llava")
    x = tiny_inputs(model, rows_for("llava"))
    with pytest.raises(VTWError, match="verified for"):
        CompiledDecoder(model_for("paligemma"), 1)
    with pytest.raises(VTWError, match="out of range"):
        CompiledDecoder(model, _n(model) + 1)
    with pytest.raises(VTWError, match="bucket"):
        CompiledDecoder(model, 1, bucket=0)
    dec = CompiledDecoder(model, 2, compile=False)
    right = dict(x, attention_mask=x["attention_mask"].flip(1), input_ids=x["input_ids"].flip(1))
    with pytest.raises(VTWError, match="left padding"):
        dec.prefill(right, 3)
    with pytest.raises(VTWError, match="max_new_tokens"):
        dec.prefill(x, 0)
    state = dec.prefill(x, 1)
    with pytest.raises(VTWError, match="max_new_tokens"):
        dec.step(state)


def test_many_decoders_in_one_process():
    """dynamo refuses a ninth graph per code object under fullgraph; each decoder compiles its own step."""
    model = model_for("llava")
    x = tiny_inputs(model, rows_for("llava", batch=False))
    want = CompiledDecoder(model, 2, compile=False).generate(x, 2)
    for k in [2] * 10:
        assert torch.equal(CompiledDecoder(model, k, compile=True, backend="eager").generate(x, 2), want)


def test_the_demo_model_answers_as_withdraw_and_generate():
    """The shipped demo model and its processor's inputs: the same greedy answer as the engine's generate."""
    import vtwctl
    from vtwctl.demo import shapes

    m = vtwctl.load("demo")
    q = shapes.make_sample("test", 2)
    x = m.build_inputs(q["question"], images=[q["image"]])
    eos = m.model.generation_config.eos_token_id
    with torch.no_grad(), vtwctl.withdraw(m.model, 7):
        want = m.model.generate(**x, max_new_tokens=8, do_sample=False)[0, x["input_ids"].shape[1]:]
    got = vtwctl.CompiledDecoder(m.model, 7, compile=False).generate(x, 8, eos_token_id=eos)[0]
    assert torch.equal(got, want[: len(got)]) and len(got) >= 1
    tok = m.processor.tokenizer
    assert tok.decode(got, skip_special_tokens=True).strip() == vtwctl.generate(m, x, k=7, max_new_tokens=8).answers[0]


def test_run_compile_through_the_console_script():
    """`vtwctl run --compile` (inductor, in the installed script) answers as the engine does; bad combinations
    are one line and exit 2 before any model loads."""
    import json

    from console import assert_one_line, batch, script

    args = ["run", "--model", "demo", "--example", "2", "--k", "7", "--max-new-tokens", "6", "--json"]
    plain = json.loads(script(*args).stdout)
    res = script(*args, "--compile", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    fast = json.loads(res.stdout)
    assert fast["compiled"] is True and plain["compiled"] is False
    assert fast["answer"] == plain["answer"] and fast["k"] == plain["k"] == 7
    assert fast["method"] == "vtw" and fast["new_tokens"] == plain["new_tokens"]
    bad = batch([[*args, "--compile", "--sample"], [*args, "--compile", "--method", "fastv"],
                 [*args, "--compile", "--positions", "rearrange"], [*args, "--compile", "--compare"],
                 ["run", "--model", "demo", "--dataset", "shapes", "--compile"]])
    for r in bad[:3]:
        assert_one_line(r, "--compile decodes greedily")
    for r in bad[3:]:
        assert_one_line(r, "--compile answers one prompt")


def test_decoder_for_keeps_one_decoder_per_model_and_k_and_frees_it_with_the_model():
    import gc
    import weakref

    from vtwctl.engine.compiled import decoder_for
    from vtwctl.testing import tiny_model

    model = tiny_model("llava")
    first = decoder_for(model, 2)
    assert decoder_for(model, 2) is first and decoder_for(model, 3) is not first
    ref = weakref.ref(model)
    del model, first
    gc.collect()
    assert ref() is None


def test_one_decoder_compiles_each_buffer_shape_on_its_own():
    """A decoder meets more buffer shapes than dynamo compiles per code object (recompile_limit, 8 by
    default; 1 here): each shape has its own compiled step, and every one decodes as the masked reference."""
    from reference import reference_greedy

    model = model_for("llava")
    x = tiny_inputs(model, rows_for("llava", batch=False))
    fast = CompiledDecoder(model, 2, compile=True, backend="eager", bucket=1, suppress_tokens=SUPPRESS)
    with torch._dynamo.config.patch(recompile_limit=1):
        for steps in (2, 3, 4, 2):
            want = reference_greedy(model, x, 2, steps, suppress=SUPPRESS)
            assert torch.equal(fast.generate(x, steps), want), steps


def test_decoder_for_follows_the_attention_implementation():
    """decoder_for keys on the attention implementation too: after sdpa -> eager the model gets a decoder for
    eager (the first token as the masked reference's under eager), and the sdpa decoder refuses to run."""
    from vtwctl.engine.compiled import decoder_for

    model = model_for("llava", impl="sdpa")
    x = tiny_inputs(model, rows_for("llava"))
    first = decoder_for(model, 2)
    model.set_attn_implementation("eager")
    second = decoder_for(model, 2)
    assert second is not first and (first.impl, second.impl) == ("sdpa", "eager")
    assert decoder_for(model, 2) is second
    with pytest.raises(VTWError, match="attention implementation changed from sdpa to eager"):
        first.prefill(x, 2)
    state = second.prefill(x, 2)
    ref = reference_logits(model, x, 2)[:, -1]
    torch.testing.assert_close(state.logits[:, KEEP], ref[:, KEEP].float(), atol=1e-4, rtol=1e-4)
