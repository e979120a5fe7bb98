"""DART on the engine against a reference selection written here on plain tensors (the authors' rule, their
default settings and layer indexing; not engine/policies/dart.py) and the masked reference forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference import decoder_layers, extend, reference_logits
from vtwctl.engine.hooks import apply
from vtwctl.engine.policies.dart import DART
from vtwctl.testing import IMAGE_ID, VIDEO_ID, tiny_inputs, tiny_model

SUPPRESS = list(range(250, 256))


def authors_selection(key_states, last_layer_state, image, query, ratio=0.778, pivots=(4, 4)):
    """The authors' ``get_retained_image_token`` for one row, on plain tensors: ``key_states`` [heads, S, D]
    the keys of layer K-1 (post-rotary), ``last_layer_state`` [S, H] the final-normed output of layer K-1,
    ``image``/``query`` lists of positions (vision tokens; text after the image). Returns kept positions.
    Pivots take their tokens in ascending position order (the authors iterate a Python set)."""
    k = key_states.permute(1, 0, 2).reshape(key_states.shape[1], -1)  # [S, heads * D]
    n_img, n_txt = min(pivots[0], len(image)), min(pivots[1], len(query))
    top_k = round(len(image) * (1 - ratio)) // (n_img + n_txt)
    image_idx = [image[i] for i in torch.norm(k[image], p=1, dim=-1).topk(n_img).indices.tolist()]
    query_idx = [query[i] for i in torch.norm(k[query], p=1, dim=-1).topk(n_txt).indices.tolist()] if n_txt else []
    kept = set(image_idx + query_idx)
    valid = [i for i in image if i not in image_idx]
    for item in sorted(kept):
        if not valid or top_k == 0:
            break
        cos = -F.cosine_similarity(last_layer_state[item], last_layer_state[valid], dim=-1)
        chosen = [valid[i] for i in cos.topk(min(top_k, len(valid))).indices.tolist()]
        kept.update(chosen)
        valid = [i for i in valid if i not in chosen]
    return kept - set(query_idx)


def reference_drop(model, x, k=2, **settings):
    """[B, S] bool: the vision tokens the authors' rule withdraws at layer ``k``, from the stock model's
    cache (keys of layer k-1) and hidden states (entering layer k, through the final norm)."""
    with torch.no_grad():
        out = model(**x, use_cache=True, output_hidden_states=True)
        keys = out.past_key_values.layers[k - 1].keys  # [B, kv heads, S, D]
        hidden = decoder_layers(model).norm(out.hidden_states[k])
    ids, valid = x["input_ids"], x["attention_mask"].bool()
    vision = (ids == IMAGE_ID) | (ids == VIDEO_ID)
    drop = torch.zeros_like(vision)
    for b in range(ids.shape[0]):
        image = vision[b].nonzero().squeeze(1).tolist()
        if not image:
            continue
        query = [i for i in range(image[0], ids.shape[1]) if valid[b, i] and not vision[b, i]]
        kept = authors_selection(keys[b], hidden[b], image, query, **settings)
        drop[b, [i for i in image if i not in kept]] = True
    return drop


def dart_model(family, impl):
    """A tiny model whose final norm has an uneven weight (random init leaves it all ones, under which the
    cosine similarity of normed states equals that of the raw ones), so that the norm's use is tested."""
    model = tiny_model(family, attn_implementation=impl)
    norm = decoder_layers(model).norm
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.2, 2.0, norm.weight.numel())[torch.randperm(norm.weight.numel(),
                          generator=torch.Generator().manual_seed(1))])
    return model


def run_dart(model, x, steps=4, **settings):
    """Logits, greedy tokens, the policy's selections (one per call) and the cache of DART on the engine."""
    policy = DART(2, **settings)
    seen = []
    select = policy.select
    policy.select = lambda tokens: seen.append(select(tokens)) or seen[-1]
    with torch.no_grad(), apply(model, policy, lo=1, what="DART K"):
        logits = model(**x).logits
        gen = model.generate(**x, max_new_tokens=steps, do_sample=False, suppress_tokens=SUPPRESS,
                             return_dict_in_generate=True)
    return logits, gen.sequences[:, x["input_ids"].shape[1]:], seen, gen.past_key_values


def greedy(model, x, drop, steps):
    """Greedy tokens from recomputing the whole sequence with the masked reference at each step."""
    new = []
    for _ in range(steps):
        logits = reference_logits(model, x, 2, drop=drop)[:, -1]
        logits[:, SUPPRESS] = float("-inf")
        tok = logits.argmax(-1, keepdim=True)
        new.append(tok)
        x = extend(x, tok, model.config.model_type)
        drop = torch.cat([drop, torch.zeros_like(tok, dtype=torch.bool)], 1)
    return torch.cat(new, 1)


CASES = {  # family: (rows, DART settings); asymmetric rows, padding, a text-only row
    "llava": ([{"pre": 3, "post": 6, "image": True}, {"pre": 5, "post": 2, "image": True}, {"pre": 4, "post": 3}],
              {"ratio": 0.5, "pivots": (2, 1)}),
    "qwen2_vl": ([{"pre": 3, "post": 5, "image": (16, 16)}, {"pre": 6, "post": 3, "image": (8, 24)}], {}),
    "llava_next": ([{"pre": 2, "post": 4, "image": (32, 64)}, {"pre": 5, "post": 3, "image": (64, 32)}], {}),
}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(CASES))
def test_dart_matches_the_authors_rule_and_the_masked_reference(family, impl):
    rows, settings = CASES[family]
    model = dart_model(family, impl)
    x = tiny_inputs(model, rows)
    drop = reference_drop(model, x, **settings)
    vision = (x["input_ids"] == IMAGE_ID) | (x["input_ids"] == VIDEO_ID)
    assert bool(drop.any()) and bool((vision & ~drop).any())  # some vision tokens leave, some stay
    logits, tokens, seen, cache = run_dart(model, x, **settings)
    assert torch.equal(seen[0].cpu(), drop) and torch.equal(seen[1].cpu(), drop)  # forward, generate's prefill
    assert len(seen) == 2 + tokens.shape[1] - 1 and all(not bool(s.any()) for s in seen[2:])  # decode: nothing
    text = ~vision & x["attention_mask"].bool()
    ref = reference_logits(model, x, 2, drop=drop)
    assert torch.allclose(logits[text], ref[text], atol=1e-4)
    assert torch.equal(tokens, greedy(model, x, drop, tokens.shape[1]))
    # layers >= K cache the kept tokens only (padding leaves too); layers < K the whole prompt
    kept = (x["attention_mask"].bool() & ~drop).sum(1).max()
    steps = tokens.shape[1] - 1
    assert cache.layers[1].keys.shape[-2] == x["input_ids"].shape[1] + steps
    assert cache.layers[2].keys.shape[-2] == int(kept) + steps


def test_defaults_and_a_wrong_selection_fails():
    """The authors' defaults (K=2, 4+4 pivots, ratio 0.778) on 64 and 48 vision tokens keep 4 pivots + 8 x 1
    tokens; a selection by key norm alone (no duplication) differs, and its logits fail the comparison."""
    model = dart_model("qwen2_vl", "eager")
    x = tiny_inputs(model, CASES["qwen2_vl"][0])
    drop = reference_drop(model, x)
    vision = x["input_ids"] == IMAGE_ID
    assert (vision & ~drop).sum(1).tolist() == [12, 12]  # 64 and 48 tokens: round(14.2), round(10.7) // 8 = 1
    logits, _, seen, _ = run_dart(model, x, steps=1)
    assert torch.equal(seen[0].cpu(), drop)
    with torch.no_grad():
        keys = model(**x, use_cache=True).past_key_values.layers[1].keys.abs().sum((1, 3))
    wrong = torch.zeros_like(drop)
    for b in range(2):
        idx = vision[b].nonzero().squeeze(1)
        n_keep = int((vision[b] & ~drop[b]).sum())
        wrong[b, idx[keys[b, idx].argsort(descending=True)[n_keep:]]] = True
    assert not torch.equal(wrong, drop)
    text = ~vision & x["attention_mask"].bool()
    assert not torch.allclose(logits[text], reference_logits(model, x, 2, drop=wrong)[text], atol=1e-4)


def test_ratio_zero_is_stock_and_k0_is_refused():
    from vtwctl.errors import VTWError

    model = tiny_model("llava")
    x = tiny_inputs(model)
    with torch.no_grad():
        stock = model(**x).logits
        with apply(model, DART(2, ratio=0.0), lo=1, what="DART K"):
            assert torch.equal(model(**x).logits, stock)
    with pytest.raises(VTWError, match="1..6"):
        with apply(model, DART(0), lo=1, what="DART K"):
            pass


def test_run_spec_checks_dart_settings_once():
    from vtwctl.spec import STOCK, RunSpec

    spec = RunSpec(method="DART", k=5, dart_k=3, dart_ratio=0.5, dart_pivots=[2, 0])
    assert (spec.method, spec.k, spec.dart) == ("dart", STOCK, (3, 0.5, (2, 0)))  # DART has its own layer
    assert RunSpec(method="dart").dart == (2, 0.778, (4, 4))  # the authors' defaults
    for kw in (dict(dart_k=0), dict(dart_k=True), dict(dart_ratio=1.5), dict(dart_pivots=(0, 0)),
               dict(dart_pivots=(4,)), dict(dart_pivots=(-1, 4)), dict(dart_pivots=(2.5, 1))):
        with pytest.raises(ValueError):
            RunSpec(method="dart", **kw)


def test_console_run_dart_on_the_demo_model():
    import json

    from console import batch, script

    dart = script("run", "--method", "dart", "--example", "2", "--json")
    assert dart.returncode == 0, dart.stderr
    out = json.loads(dart.stdout)
    assert (out["method"], out["k"], out["dart_ratio"], out["dart_pivots"]) == ("dart", 2, 0.778, [4, 4])
    stock = json.loads(script("run", "--method", "stock", "--example", "2", "--json").stdout)
    assert out["num_vision_tokens"] == stock["num_vision_tokens"] == 144
    assert out["kv_bytes"] < stock["kv_bytes"]  # layers >= 2 cache the kept vision tokens only
    bad = batch([["run", "--method", "dart", "--example", "2", "--dart-pivots", "4"],
                 ["run", "--method", "dart", "--example", "2", "--dart-ratio", "2"],
                 ["run", "--method", "dart", "--example", "2", "--dart-k", "0"]])
    assert [b.returncode for b in bad] == [2, 2, 2], [b.stderr for b in bad]
    assert "--dart-pivots" in bad[0].stderr and "--dart-ratio" in bad[1].stderr and "--dart-k" in bad[2].stderr


def test_exact_flops_by_hand():
    """DART keeps the vision pivots and budget // pivots per pivot: 40 vision tokens, ratio 0.5, 2 + 2 pivots
    keep 2 + (20 // 4) * 4 = 22; layer 0 sees 50 tokens, layers 1..2 see 10 text + 22 vision."""
    from vtwctl import flops as F
    from vtwctl.engine.policies.dart import kept_count

    d = F.Dims(num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
               vocab_size=256)

    def layer(s, keys):  # multiply-adds of one layer: s queries over `keys` keys
        return s * 64 * 64 + 2 * s * 64 * 32 + 2 * 4 * s * keys * 16 + s * 64 * 64 + 3 * s * 64 * 128

    assert kept_count(40, 10, 0.5, (2, 2)) == 22 and kept_count(16, 10, 0.778, (4, 4)) == 4
    assert kept_count(576, 66, 0.778, (4, 4)) == 132  # LLaVA-1.5: the authors' "128" keeps 4 + 16 x 8
    assert F.layer_tokens(3, 40, 10, dart=(1, 0.5, (2, 2))) == [(40, 10), (22, 10), (22, 10)]
    rep = F.exact_flops(d, 40, 10, dart=(1, 0.5, (2, 2)), decode_tokens=2)
    assert rep.by_layer == [2 * layer(50, 50), 2 * layer(32, 32), 2 * layer(32, 32)]
    head = 2 * 64 * 256
    steps = [2 * (layer(1, 51 + j) + 2 * layer(1, 33 + j)) + head for j in range(2)]
    assert rep.lm_head == head and rep.decode_total == sum(steps)
    with pytest.raises(ValueError):
        F.layer_tokens(3, 40, 10, fastv=True, dart=(1, 0.5, (2, 2)))


def test_profile_dart_row_on_llava_dims():
    import json

    from console import script
    from vtwctl import flops as F

    out = script("profile", "--model", "llava-1.5-7b", "--flops-only", "--method", "stock,dart", "--text-tokens",
                 "66", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["rows"] == ["baseline", "dart"] and d["dart"]["k"] == 2
    assert d["dart_settings"] == {"k": 2, "ratio": 0.778, "pivots": [4, 4]} and d["dart"]["drop_ratio"] == 0.778
    dims = F.dims_for("llava-1.5-7b")
    h, inter, vocab, n = dims.hidden_size, dims.intermediate_size, dims.vocab_size, dims.num_layers

    def layer(s):  # MHA, gated MLP: 4 projections, q.k^T and attn.v over s x s, 3 MLP matrices (FLOPs)
        return 2 * (4 * s * h * h + 2 * s * s * h + 3 * s * h * inter)

    by_hand = 2 * layer(576 + 66) + (n - 2) * layer(66 + 132) + 2 * h * vocab
    assert d["dart"]["tflops"] == pytest.approx(by_hand / 1e12, rel=1e-12)


def test_counted_flops_of_the_engine_match_the_exact_count():
    from vtwctl import flops as F

    model = tiny_model("llava", num_layers=4, hidden=64)
    x = tiny_inputs(model, rows=[{"pre": 4, "post": 6, "image": (32, 32)}])
    vision, text = F.vision_text_counts(model, x["input_ids"])
    dart = (2, 0.5, (2, 2))
    with apply(model, DART(*dart), lo=1, what="DART K"):
        counted = F.counted_flops(model, x, None, backend="torch", logits_to_keep=1)
    d = F.Dims.from_config(model.config)
    exact = F.exact_flops(d, vision, text, dart=dart, logits_to_keep=1).language
    # the counter also sees the selection's own key projection at layer K-1, which the analytic count leaves out
    assert counted == exact + 2 * (vision + text) * d.hidden_size * d.num_kv_heads * d.head_dim
    assert F.exact_flops(d, vision, text, k=2).language < exact < F.exact_flops(d, vision, text).language
