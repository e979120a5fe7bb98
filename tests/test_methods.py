"""Table 2's other rows on the engine: Rand (random input tokens dropped at K) and VTW† (VTW at a random
K per sample), against the independent masked reference with the dropped positions drawn by hand."""

from __future__ import annotations

import random

import pytest
import torch

from reference import reference_logits
from vtwctl.methods import RANDOM_K_SPAN, canonical, context, rand_drop, random_k, sample_seed
from vtwctl.testing import IMAGE_ID, tiny_inputs, tiny_model

ROWS = [{"pre": 3, "post": 5, "image": (32, 64)}, {"pre": 4, "post": 3, "image": (32, 32)}, {"pre": 2, "post": 6}]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava", attn_implementation="eager")


def drawn_by_hand(x: dict, seeds: list[int]) -> torch.Tensor:
    """The tokens Rand drops: as many as the row's vision tokens, among its non-pad tokens, per seed."""
    ids, valid = x["input_ids"], x["attention_mask"].bool()
    drop = torch.zeros_like(valid)
    for row, seed in enumerate(seeds):
        n = int((ids[row] == IMAGE_ID).sum())
        candidates = valid[row].nonzero().squeeze(1).tolist()
        drop[row, random.Random(seed).sample(candidates, n)] = True
    return drop


def test_rand_matches_the_masked_reference_with_the_drawn_tokens(model):
    x = tiny_inputs(model, ROWS)
    seeds = [sample_seed(0, f"s{i}") for i in range(3)]
    drop = drawn_by_hand(x, seeds)
    assert int(drop[2].sum()) == 0 and int(drop[0].sum()) > 0  # a text-only row loses nothing
    assert bool((drop & (x["input_ids"] != IMAGE_ID)).any())  # text tokens are drawn too
    for k in (1, 3):
        with torch.no_grad(), rand_drop(model, k, seeds) as engine:
            out = model(**x).logits
        assert torch.equal(engine.dropped[0], drop)
        ref = reference_logits(model, x, k, drop=drop)
        kept = x["attention_mask"].bool() & ~drop
        assert torch.allclose(out[kept], ref[kept], atol=1e-4)
        # a dropped position predicts from the last kept token before it (the authors' shortened sequence)
        for row in range(2):
            for j in drop[row].nonzero().squeeze(1).tolist():
                prev = [i for i in range(j) if kept[row, i]]
                if prev:
                    assert torch.allclose(out[row, j], ref[row, prev[-1]], atol=1e-4)
        with torch.no_grad(), rand_drop(model, k, seeds[::-1][:1] * 3):
            other = model(**x).logits
        assert not torch.allclose(other[0], out[0], atol=1e-3)  # another seed, another draw


def test_rand_generates_with_cache_and_is_reproducible(model):
    x = tiny_inputs(model, ROWS)
    seeds = [sample_seed(3, f"s{i}") for i in range(3)]
    outs = []
    for _ in range(2):
        with torch.no_grad(), context(model, "rand", 2, seeds=seeds):
            outs.append(model.generate(**x, max_new_tokens=5, do_sample=False))
    assert torch.equal(outs[0], outs[1])


def test_vtw_random_draws_k_per_sample_in_the_paper_range():
    ks = [random_k(0, f"q{i}", 16, 32) for i in range(400)]
    assert min(ks) == 16 - RANDOM_K_SPAN and max(ks) == 16 + RANDOM_K_SPAN  # Random[8, 24] for K = 16
    assert len(set(ks)) == 2 * RANDOM_K_SPAN + 1
    assert ks == [random_k(0, f"q{i}", 16, 32) for i in range(400)]  # seeded: a resume draws the same K
    assert ks != [random_k(1, f"q{i}", 16, 32) for i in range(400)]
    assert {random_k(0, f"q{i}", 3, 6) for i in range(100)} <= set(range(0, 7))  # clipped to 0..N


def test_vtw_random_is_vtw_at_the_drawn_k(model):
    """VTW† runs VTW at the K drawn for the sample: the masked reference at that K, not at its neighbours."""
    x = tiny_inputs(model, ROWS[:1])
    k = random_k(0, "sample-7", 3, 6)
    text = (x["input_ids"] != IMAGE_ID) & x["attention_mask"].bool()
    with torch.no_grad(), context(model, "vtw-random", k):
        got = model(**x).logits
    assert torch.allclose(got[text], reference_logits(model, x, k)[text], atol=1e-4)
    for other in {max(k - 1, 0), min(k + 1, 6)} - {k}:
        assert not torch.allclose(got[text], reference_logits(model, x, other)[text], atol=1e-3)


def test_method_names():
    from vtwctl.errors import VTWError

    assert canonical("baseline") == "stock" and canonical("VTW") == "vtw" and canonical("vtw_random") == "vtw-random"
    with pytest.raises(VTWError, match="unknown method 'fast'"):
        canonical("fast")


def test_compare_halves_are_the_stock_model_and_the_masked_reference(demo_loaded):
    """Fig. 6: the same prompt with the stock model and with VTW at K=4. Each half equals the independent
    masked reference (tests/reference.py, recomputed at every step) at its K; the halves differ in their
    KV cache by exactly 4 layers' worth of the 144 vision tokens."""
    from PIL import Image

    from reference import extend
    from vtwctl.infer import compare

    m = demo_loaded
    x = m.build_inputs("How many shapes are there?", images=[Image.new("RGB", (96, 96), (250, 250, 250))])
    both = compare(m, x, 4, max_new_tokens=6)
    eos = m.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    for half, k in (("stock", m.num_layers), ("vtw", 4)):
        cur, vision, want = x, x["input_ids"] == m.model.config.image_token_index, []
        for _ in range(6):
            tok = reference_logits(m.model, cur, k, drop=vision)[:, -1].argmax(-1, keepdim=True)
            if int(tok) in eos:
                break
            want.append(int(tok))
            cur, vision = extend(cur, tok), torch.cat([vision, torch.zeros_like(tok, dtype=torch.bool)], 1)
        assert both[half].tokens[0] == want, half
    assert both["stock"].method == "stock" and both["vtw"].method == "vtw" and both["vtw"].k == 4
    stock = both["stock"]
    per_token_layer = stock.kv_bytes / (8 * (stock.num_vision_tokens[0] + stock.num_text_tokens[0]
                                             + stock.new_tokens[0] - 1))
    saved = stock.kv_bytes - both["vtw"].kv_bytes
    assert stock.num_vision_tokens[0] == 144 and saved == pytest.approx(4 * 144 * per_token_layer)
