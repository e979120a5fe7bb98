"""PyramidDrop on the engine against a reference selection written here on plain tensors (the authors' rule,
their ratio list and layer indexing; not engine/policies/pyramid_drop.py) and the multi-stage masked reference.

The authors (Cooperx521/PyramidDrop, ``pdrop_forward``/``pdrop_rank_drop``) rank after decoder layer
``rank_layer - 1`` with the attention of layer ``rank_layer`` (its input norm, q/k projections and rotary) of
the last instruction token over the tokens still kept, softmax in float32 then averaged over heads, and keep
``int(N * ratio_list[s])`` of the row's ``N`` vision tokens, ``ratio_list`` given literally
(``--image_token_ratio_list "[0.5,0.25,0.125]"``). Here that attention is read from the eager model's
``output_attentions`` at layer ``rank_layer``, with the earlier stages' drops masked out.
"""

from __future__ import annotations

import pytest
import torch

from reference import extend, reference_stages
from vtwctl.engine.hooks import apply
from vtwctl.engine.policies.pyramid_drop import DEFAULTS, PyramidDrop, vision_by_layer
from vtwctl.errors import ArgumentError
from vtwctl.testing import IMAGE_ID, VIDEO_ID, tiny_inputs, tiny_model

SUPPRESS = list(range(250, 256))


def authors_drops(eager, x, layer_list, ratio_list, rearrange=False):
    """``[(layer, [B, S] bool)]``: the vision tokens the authors' rule drops before each layer of ``layer_list``,
    ``ratio_list`` the kept fractions after each stage (their list, without the 1.0 they prepend)."""
    ratios = [1.0, *ratio_list]
    ids, valid = x["input_ids"], x["attention_mask"].bool()
    vision = ((ids == IMAGE_ID) | (ids == VIDEO_ID)) & valid
    image_tokens = vision.sum(1).tolist()
    last = [int(valid[b].nonzero().max()) for b in range(ids.shape[0])]  # the last instruction token
    drops, kept = [], vision.clone()
    for stage, rank_layer in enumerate(layer_list):
        att = reference_stages(eager, x, drops, rearrange=rearrange, output_attentions=True).attentions[rank_layer]
        drop = torch.zeros_like(vision)
        for b, n in enumerate(image_tokens):
            if n == 0:
                continue
            idx = kept[b].nonzero().squeeze(1)
            assert len(idx) == int(n * ratios[stage])  # what the previous stage kept
            score = att[b, :, last[b], :].mean(0)[idx]  # averaged over heads
            keep = score.topk(int(n * ratios[stage + 1])).indices
            drop[b, idx] = True
            drop[b, idx[keep]] = False
        kept &= ~drop
        drops.append((rank_layer, drop))
    return drops


def run_pdrop(model, x, layers, ratio, steps=4, positions="keep"):
    """Logits, greedy tokens, the selections per call and stage (in the call's layout) and the cache."""
    policy = PyramidDrop(layers, ratio)
    seen = []
    select = policy.select

    def spy(tokens):
        sel = select(tokens)
        full = torch.zeros(tokens.index.shape[0], int(tokens.index.max()) + 1, dtype=torch.bool)
        rows, cols = (sel & tokens.valid).nonzero(as_tuple=True)
        full[rows, tokens.index[rows, cols]] = True
        seen.append(full)
        return sel

    policy.select = spy
    with torch.no_grad(), apply(model, policy, positions, lo=1, what="PyramidDrop layer"):
        logits = model(**x).logits
        gen = model.generate(**x, max_new_tokens=steps, do_sample=False, suppress_tokens=SUPPRESS,
                             return_dict_in_generate=True)
    return logits, gen.sequences[:, x["input_ids"].shape[1]:], seen, gen.past_key_values


def greedy(model, x, drops, steps, rearrange=False):
    """Greedy tokens from recomputing the whole sequence with the masked reference at each step."""
    new = []
    for _ in range(steps):
        logits = reference_stages(model, x, drops, rearrange=rearrange).logits[:, -1]
        logits[:, SUPPRESS] = float("-inf")
        tok = logits.argmax(-1, keepdim=True)
        new.append(tok)
        x = extend(x, tok, model.config.model_type)
        drops = [(k, torch.cat([d, torch.zeros_like(tok, dtype=torch.bool)], 1)) for k, d in drops]
    return torch.cat(new, 1)


CASES = {  # family: (rows, layers, the authors' ratio list, our λ); asymmetric rows, padding, a text-only row
    "llava": ([{"pre": 3, "post": 6, "image": True}, {"pre": 5, "post": 2, "image": True}, {"pre": 4, "post": 3}],
              (1, 3, 4), [0.7, 0.49, 0.343], 0.7),
    "qwen2_vl": ([{"pre": 3, "post": 5, "image": (16, 16)}, {"pre": 6, "post": 3, "image": (8, 24)},
                  {"pre": 2, "post": 4}], (2, 3, 5), [0.5, 0.25, 0.125], 0.5),
    "llava_next": ([{"pre": 2, "post": 4, "image": (32, 64)}, {"pre": 5, "post": 3, "image": (64, 32)}],
                   (1, 2, 4), [0.6, 0.36, 0.216], 0.6),
    # deepstack (visual features added inside the language model), and sliding windows with image blocks
    "qwen3_vl": ([{"pre": 3, "post": 5, "image": (32, 32)}, {"pre": 6, "post": 3, "image": (32, 64)},
                  {"pre": 2, "post": 4}], (2, 3, 5), [0.5, 0.25, 0.125], 0.5),
    "gemma3": ([{"pre": 3, "post": 5, "image": True}, {"pre": 6, "post": 3, "image": True}, {"pre": 2, "post": 4}],
               (2, 3, 5), [0.5, 0.25, 0.125], 0.5),
}


def check(model, x, drops, layers, ratio, positions="keep"):
    vision = (x["input_ids"] == IMAGE_ID) | (x["input_ids"] == VIDEO_ID)
    logits, tokens, seen, cache = run_pdrop(model, x, layers, ratio, positions=positions)
    n = len(layers)
    for call in (0, 1):  # forward, generate's prefill: every stage's selection
        for s, (_, drop) in enumerate(drops):
            assert torch.equal(seen[call * n + s][:, : drop.shape[1]], drop), (call, s)
    assert all(not bool(s.any()) for s in seen[2 * n:])  # decoding steps select nothing
    text = ~vision & x["attention_mask"].bool()
    rearrange = positions == "rearrange"
    ref = reference_stages(model, x, drops, rearrange=rearrange).logits
    assert torch.allclose(logits[text], ref[text], atol=1e-4)
    assert torch.equal(tokens, greedy(model, x, drops, tokens.shape[1], rearrange=rearrange))
    # each layer caches exactly the tokens its stage ran on (padding leaves at the first stage)
    steps, gone = tokens.shape[1] - 1, torch.zeros_like(vision)
    for i, layer in enumerate(cache.layers):
        for k, drop in drops:
            gone = gone | drop if k == i else gone
        want = x["input_ids"].shape[1] if i < layers[0] else int((x["attention_mask"].bool() & ~gone).sum(1).max())
        window = getattr(layer, "sliding_window", None)  # a sliding layer's cache keeps its last window - 1 keys
        assert layer.keys.shape[-2] == (want + steps if window is None else min(want + steps, window - 1)), i
    return logits


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(CASES))
def test_pdrop_matches_the_authors_rule_and_the_masked_reference(family, impl):
    rows, layers, ratio_list, ratio = CASES[family]
    window = {"sliding_window": 6} if family == "gemma3" else {}  # a window that binds at these lengths
    model = tiny_model(family, attn_implementation=impl, **window)
    eager = model if impl == "eager" else tiny_model(family, attn_implementation="eager", **window)
    x = tiny_inputs(model, rows)
    drops = authors_drops(eager, x, layers, ratio_list)
    vision = (x["input_ids"] == IMAGE_ID) | (x["input_ids"] == VIDEO_ID)
    for _, drop in drops:  # at each stage some vision tokens leave and some stay
        assert bool(drop.any()) and bool((vision & ~drop).any())
    check(model, x, drops, layers, ratio)


def test_rearranged_positions_as_the_authors_and_right_padding():
    """The authors renumber the kept tokens 0, 1, 2, ... after each stage (``position_ids`` rebuilt in
    ``pdrop_rank_drop``): ``positions="rearrange"`` does, stage by stage; their batches are right padded."""
    rows, layers, ratio_list, ratio = CASES["llava"]
    model = tiny_model("llava", attn_implementation="eager")
    x = tiny_inputs(model, rows)
    drops = authors_drops(model, x, layers, ratio_list, rearrange=True)
    assert drops[1][1].tolist() != authors_drops(model, x, layers, ratio_list)[1][1].tolist()  # positions matter
    check(model, x, drops, layers, ratio, positions="rearrange")
    right = tiny_inputs(model, rows, padding="right")
    drops = authors_drops(model, right, layers, ratio_list)
    text = (right["input_ids"] != IMAGE_ID) & right["attention_mask"].bool()
    with torch.no_grad(), apply(model, PyramidDrop(layers, ratio), lo=1):
        logits = model(**right).logits
    assert torch.allclose(logits[text], reference_stages(model, right, drops).logits[text], atol=1e-4)


def test_the_authors_defaults_on_a_deep_model_and_wrong_rules_fail():
    """Layers 8/16/24 and λ = 0.5 on a 26-layer model: 64 and 48 vision tokens keep 32/16/8 and 24/12/6.
    Ranking with the previous layer's attention (FastV's choice), or counting each stage from the previous
    stage's count with λ = 0.7, gives other selections, whose logits fail the comparison."""
    model = tiny_model("qwen2_vl", attn_implementation="eager", num_layers=26)
    x = tiny_inputs(model, CASES["qwen2_vl"][0][:2])
    drops = authors_drops(model, x, DEFAULTS["layers"], [0.5, 0.25, 0.125])
    vision = x["input_ids"] == IMAGE_ID
    kept = vision.clone()
    counts = []
    for _, drop in drops:
        kept &= ~drop
        counts.append(kept.sum(1).tolist())
    assert counts == [[32, 24], [16, 12], [8, 6]]
    logits, _, seen, _ = run_pdrop(model, x, DEFAULTS["layers"], DEFAULTS["ratio"], steps=1)
    assert all(torch.equal(seen[s][:, : x["input_ids"].shape[1]], drops[s][1]) for s in range(3))
    text = ~vision & x["attention_mask"].bool()
    assert torch.allclose(logits[text], reference_stages(model, x, drops).logits[text], atol=1e-4)
    shifted = authors_drops(model, x, [7, 15, 23], [0.5, 0.25, 0.125])  # attention of the layer before
    wrong = [(k, d) for (k, _), (_, d) in zip(drops, shifted)]
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(drops, wrong))
    assert not torch.allclose(logits[text], reference_stages(model, x, wrong).logits[text], atol=1e-4)
    # λ = 0.7 from the original count: 16 -> 11, 7, 5 (int(16 * 0.49), int(16 * 0.343)); per stage: 11, 7, 4
    assert vision_by_layer(5, 16, 9, (1, 3, 4), 0.7) == [16, 11, 11, 7, 5]


def test_vision_by_layer_by_hand():
    # 576 vision tokens (LLaVA-1.5), 32 layers, the authors' defaults: 576 x 8, 288 x 8, 144 x 8, 72 x 8
    assert vision_by_layer(32, 576, 66) == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8
    assert vision_by_layer(4, 5, 3, (1, 2, 3), 0.5) == [5, 2, 1, 0]  # int(2.5), int(1.25), int(0.625)
    assert vision_by_layer(3, 10, 3, (2,), 0.3) == [10, 10, 3]
    assert vision_by_layer(6, 0, 7, (1, 2), 0.5) == [0] * 6
    for bad in (dict(layers=(2, 2)), dict(layers=(3, 1)), dict(layers=(0, 2)), dict(layers=(1, 6)),
                dict(layers=()), dict(layers=(1.5,)), dict(ratio=1.5), dict(ratio=-0.1)):
        with pytest.raises(ArgumentError):
            vision_by_layer(6, 16, 4, **{"layers": (1, 2), "ratio": 0.5, **bad})


def test_counted_vision_tokens_match_vision_by_layer():
    """What each layer of the engine runs on, counted by hooks, equals ``vision_by_layer`` (one row)."""
    model = tiny_model("llava", num_layers=6)
    x = tiny_inputs(model, [{"pre": 4, "post": 5, "image": True}])
    widths = []
    with torch.no_grad(), apply(model, PyramidDrop((1, 3, 4), 0.7), lo=1):
        # registered after the engine's hooks: they see what each layer runs on
        hooks = [layer.register_forward_pre_hook(lambda m, a, kw: widths.append(
            (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
            for layer in model.model.language_model.layers]
        try:
            model(**x)
        finally:
            for h in hooks:
                h.remove()
    vision = int((x["input_ids"] == IMAGE_ID).sum())
    text = x["input_ids"].shape[1] - vision
    assert widths == [v + text for v in vision_by_layer(6, vision, text, (1, 3, 4), 0.7)]


def test_refusals_and_ratio_one_is_stock():
    model = tiny_model("llava")  # 6 layers
    x = tiny_inputs(model)
    with torch.no_grad():
        stock = model(**x).logits
        with apply(model, PyramidDrop((1, 2), ratio=1.0), lo=1):
            assert torch.equal(model(**x).logits, stock)
    for bad in (dict(layers=(2, 1)), dict(layers=(2, 2)), dict(layers=(0, 2)), dict(layers=[]),
                dict(ratio=2.0), dict(layers=(1, True))):
        with pytest.raises(ArgumentError):
            PyramidDrop(**bad)
    for layers in ((1, 6), (6,), DEFAULTS["layers"]):  # past the model's layers
        with pytest.raises(ArgumentError):
            with apply(model, PyramidDrop(layers), lo=1):
                pass
