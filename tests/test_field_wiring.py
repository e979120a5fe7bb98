"""The field's methods through the one wiring (registry -> methods.context/prepare -> run/profile/lmms-eval):
the widths each decoder layer actually runs on (read by hooks) equal the counts exact FLOPs use; measured and
FLOPs-only profile rows agree; lmms-eval runs them; a method that keeps everything is the stock model."""

from __future__ import annotations

import json

import pytest
import torch

from vtwctl.testing import IMAGE_ID, tiny_inputs, tiny_model

CASES = [  # (method, settings on a 6-layer tiny LLaVA, the run's K)
    ("vtw", {}, 3),
    ("fastv", {"fastv": {"k": 2, "ratio": 0.5}}, None),
    ("dart", {"dart": {"k": 2, "ratio": 0.5, "pivots": (2, 2)}}, None),
    ("pdrop", {"pdrop": {"layers": (1, 3, 5), "ratio": 0.5}}, None),
    ("sparsevlm", {"sparsevlm": {"layers": (1, 2, 3), "retain": 64}}, None),
    ("visionzip", {"visionzip": {"dominant": 6, "contextual": 3}}, None),
    ("visionzip+vtw", {"visionzip": {"dominant": 6, "contextual": 3}}, 2),
]


@pytest.mark.parametrize("method, settings, k", CASES, ids=[c[0] for c in CASES])
def test_each_layer_runs_on_the_tokens_exact_flops_count(method, settings, k):
    """Hooks on the decoder layers record how many tokens each one gets in prefill; the registry's counts
    (vision_by_layer, a reducer's vision_tokens) plus the text tokens must be those widths, layer by layer."""
    from vtwctl.engine.registry import parts
    from vtwctl.methods import context, prepare
    from vtwctl.spec import RunSpec

    model = tiny_model("llava", num_layers=6)
    x = tiny_inputs(model, rows=[{"pre": 5, "post": 7, "image": (32, 32)}])
    vision = int((x["input_ids"] == IMAGE_ID).sum())
    text = int(x["input_ids"].shape[1]) - vision
    spec = RunSpec(method=method, k=k, settings=settings)
    widths = []
    layers = model.model.language_model.layers
    fed = prepare(model, method, x, spec.options())
    with context(model, method, k, settings=spec.options()), torch.no_grad():
        # registered after the engine's own pre-hooks, so they see what each layer really gets
        handles = [layer.register_forward_pre_hook(lambda m, a, kw: widths.append(
            (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True) for layer in layers]
        try:
            model(**fed)
        finally:
            for h in handles:
                h.remove()
    reducer, policy = parts(method)
    v = vision if reducer is None else reducer.vision_tokens(vision, spec.settings.get(reducer.name))
    if policy.name == "stock":
        want = [v] * len(layers)
    elif policy.uses_k:
        want = [v] * k + [0] * (len(layers) - k)
    else:
        want = policy.vision_by_layer(len(layers), v, text, spec.settings.get(policy.name))
    assert widths == [w + text for w in want], (method, vision, text)
    assert widths[-1] < vision + text  # something left


def test_profile_measured_rows_count_what_runs_by_hand():
    """The demo (8 layers, 144 vision tokens): PyramidDrop at 2,4,6 keeps 72/36/18, SparseVLM (64: 66/30/17
    after layers 1,3,5), VisionZip+VTW 64 tokens below K = 4; exact FLOPs of those widths, one decode step."""
    from console import script
    from vtwctl.flops import dims_for, exact_flops

    out = script("profile", "--method", "stock,pdrop,sparsevlm,visionzip+vtw", "--k", "4", "--set",
                 "pdrop.layers=2,4,6", "--set", "sparsevlm.layers=1,3,5", "--set", "sparsevlm.retain=64", "--json",
                 "--repeats", "1", "--max-repeats", "1", "--warmup", "0", "--max-new-tokens", "2")
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)
    vision, text = m["tokens"]["vision"], m["tokens"]["text"]
    dims = dims_for("demo")
    assert (vision, dims.num_layers) == (144, 8)
    hand = {"baseline": [144] * 8, "pdrop": [144, 144, 72, 72, 36, 36, 18, 18],
            "sparsevlm": [144, 144, 66, 66, 30, 30, 17, 17], "visionzip+vtw": [64] * 4 + [0] * 4}
    for row, per_layer in hand.items():
        rep = exact_flops(dims, vision, text, per_layer=per_layer, decode_tokens=1)
        assert m[row]["tflops"] == pytest.approx((rep.prefill + rep.lm_head + rep.decode_total) / 1e12), row
    assert m["visionzip+vtw"]["kv_cache_bytes"] < m["pdrop"]["kv_cache_bytes"] < m["baseline"]["kv_cache_bytes"]
    assert m["pdrop"]["settings"] == {"layers": [2, 4, 6], "ratio": 0.5} and m["pdrop"]["k"] == 2


def test_lmms_eval_model_args_of_the_field():
    from vtwctl.errors import VTWError
    from vtwctl.integrations.lmms_eval.args import parse_model_args, resolve_k
    from vtwctl.spec import K

    p = parse_model_args({"method": "pdrop", "layers": "2;4;6", "ratio": "0.25"})
    assert p.spec.options() == {"layers": (2, 4, 6), "ratio": 0.25} and p.k.stock
    assert resolve_k(p, "demo", 8, "mme") == (2, "pdrop (layers (2, 4, 6), ratio 0.25)")
    z = parse_model_args({"method": "visionzip+vtw", "k": 4, "dominant": 20})
    assert z.k == K(4) and z.spec.options() == {"dominant": 20, "contextual": 10}
    assert resolve_k(z, "demo", 8, "mme") == (4, "k from model_args")
    for args, words in [({"method": "pdrop", "layers": "4;2"}, "increasing"),
                        ({"method": "visionzip+vtw", "dominant": 20}, "say which K"),
                        ({"method": "sparsevlm", "retain": 100}, "one of [64, 96, 128, 192]"),
                        ({"method": "rand", "k": 2}, "method must be one of")]:
        with pytest.raises(VTWError) as err:
            parse_model_args(args)
        assert words in str(err.value), (args, str(err.value))


def test_lmms_eval_runs_the_field_on_the_demo(demo_loaded):
    """PyramidDrop keeping every token (λ = 1) answers as the stock model; VisionZip(+VTW) generate and score
    continuations through its shrunken prompt."""
    import math

    from vtwctl.demo import shapes
    from vtwctl.integrations.lmms_eval.args import parse_model_args
    from vtwctl.integrations.lmms_eval.model import Item, Runner

    rows = shapes.generate("test", 3)

    def runner(**args):
        return Runner(parse_model_args({"pretrained": "demo", **args}), loaded=demo_loaded, warn=lambda *_: None)

    items = [Item(r["question"], [r["image"]], "vtwctl_shapes", {"max_new_tokens": 4, "temperature": 0,
                                                                  "until": []}, "test") for r in rows]
    stock = [a.text for a in runner(method="baseline").generate(items)]
    assert [a.text for a in runner(method="pdrop", layers="2;4;6", ratio=1.0).generate(items)] == stock
    for args in ({"method": "visionzip"}, {"method": "visionzip+vtw", "k": 3, "batch_size": 2}):
        answers = runner(**args).generate(items)
        assert len(answers) == 3 and all(isinstance(a.text, str) for a in answers)
        scored = runner(**args).loglikelihood([Item(r["question"], [r["image"]], "vtwctl_shapes", {}, "test",
                                                    continuation=" 3") for r in rows])
        assert all(math.isfinite(nll) for nll, _ in scored)
