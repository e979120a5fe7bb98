"""The fast KL sweep against full VTW forwards, and the choice of K."""

from __future__ import annotations

import pytest
import torch

from vtwctl.calibrate import choose_k, kl_vtw_base, sweep_sample, teacher_forced
from vtwctl.engine.hooks import withdraw
from vtwctl.errors import VTWError
from vtwctl.testing import tiny_inputs, tiny_model

FAMILIES = ["llava", "llava_next", "qwen2_vl"]
# families whose text-only tail differs: a sliding window shorter than the prompt (Gemma 3, Mistral 3),
# a bidirectional prefix (PaliGemma), deepstack features and QK-norm (Qwen3-VL)
NEW_FAMILIES = [("gemma3", {"sliding_window": 6}), ("mistral3", {"sliding_window": 6}), ("paligemma", {}),
                ("qwen3_vl", {})]


def kl_by_hand(p_logits, q_logits):
    """KL(P || Q) = sum p (log p - log q), written out independently."""
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    return (p * (p.log() - q.log())).sum(-1)


def test_kl_direction_matches_reference_code():
    torch.manual_seed(0)
    base, vtw = torch.randn(3, 50), torch.randn(3, 50)
    # the paper's code: KLDivLoss(log_softmax(base), softmax(vtw)), summed per sample
    ref = torch.nn.KLDivLoss(reduction="none")(torch.log_softmax(base, -1), torch.softmax(vtw, -1)).sum(-1)
    assert torch.allclose(kl_vtw_base(vtw, base), ref, atol=1e-6)
    assert torch.allclose(kl_vtw_base(vtw, base).double(), kl_by_hand(vtw, base), atol=1e-6)
    assert not torch.allclose(kl_vtw_base(vtw, base), kl_vtw_base(base, vtw), atol=1e-3)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_sweep_equals_full_withdraw_runs(family, impl):
    model = tiny_model(family, attn_implementation=impl, num_layers=8)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # sharper distributions, so KL values are well above the tolerance
    image = (8, 8) if family.startswith("qwen") else (32, 64)
    x = tiny_inputs(model, [{"pre": 4, "post": 9, "image": image}])
    _sweep_matches_withdraw(model, x)


@pytest.mark.parametrize("family,kw", NEW_FAMILIES)
def test_fast_sweep_equals_full_withdraw_runs_on_other_layouts(family, kw):
    model = tiny_model(family, num_layers=8, **kw)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    image = (4, 6) if family.startswith("qwen") else True
    x = tiny_inputs(model, [{"pre": 4, "post": 3, "image": image}])  # vision tokens inside the last token's window
    # within a window, late K can leave the last tokens untouched (KL 0): only some K must move the distribution
    _sweep_matches_withdraw(model, x, every_k=False)


def test_sweep_refuses_a_prompt_ending_with_a_vision_token():
    model = tiny_model("llava", num_layers=4)
    x = tiny_inputs(model, [{"pre": 3, "post": 0, "image": True}])
    with pytest.raises(VTWError, match="ends with a vision token"):
        sweep_sample(model, x, k_min=1)


def _sweep_matches_withdraw(model, x, every_k: bool = True):
    for tokens in (1, 3):
        with torch.no_grad():
            base = model(**x).logits[0, -tokens:]
            expected = []
            for k in range(2, 8):
                with withdraw(model, k):
                    vtw = model(**x).logits[0, -tokens:]
                expected.append(float(kl_by_hand(vtw, base).mean()))
        fast = sweep_sample(model, x, k_min=2, tokens=tokens)
        assert fast.shape == (6,)
        assert torch.allclose(fast.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5), (fast, expected)
        # withdrawal changes the distribution: the check can fail
        assert min(expected) > 1e-3 if every_k else max(expected) > 1e-4  # 10x the tolerance at least


def test_teacher_forcing_appends_greedy_answer():
    model = tiny_model("llava", num_layers=4)
    x = tiny_inputs(model, [{"pre": 3, "post": 4, "image": (32, 32)}])

    class L:
        pass

    loaded = L()
    loaded.model = model
    ext = teacher_forced(loaded, x, 4)
    assert ext["input_ids"].shape[1] == x["input_ids"].shape[1] + 3
    with torch.no_grad():
        logits = model(**ext).logits[0]
    s = x["input_ids"].shape[1]
    # each appended token is the stock model's greedy choice at the previous position
    assert torch.equal(logits[s - 1 : s + 2].argmax(-1), ext["input_ids"][0, s : s + 3])


def test_choose_k_first_below_eta():
    kl = {5: 0.05, 6: 0.004, 7: 0.0025, 8: 0.0031, 9: 0.001}
    assert choose_k(kl, 0.003, 12) == 7  # first below, even though 8 is above again
    assert choose_k(kl, 0.005, 12) == 6
    assert choose_k(kl, 0.0001, 12) == 12  # none qualifies: no withdrawal


def test_kl_from_bf16_hidden_states_is_not_biased_by_bf16_logits():
    """At eta ~ 1e-4 the logits' precision matters: the sweep evaluates norm + lm_head in fp32."""
    from types import SimpleNamespace

    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from vtwctl.calibrate import head_fp32, kl_vtw_base

    torch.manual_seed(0)
    d, v = 256, 32000
    head = torch.nn.Linear(d, v, bias=False).to(torch.bfloat16)
    torch.nn.init.normal_(head.weight, std=0.3)  # logits with a spread like a real LLM's (std ~5)
    norm = LlamaRMSNorm(d).to(torch.bfloat16)
    model = SimpleNamespace(lm_head=head, config=SimpleNamespace())
    base = torch.randn(8, d).to(torch.bfloat16)
    vtw = (base.float() + 0.003 * torch.randn(8, d)).to(torch.bfloat16)

    def exact(a, b):  # float64 from the same bf16 hidden states, written out by hand
        def logp(x):
            x = x.double()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
            return torch.log_softmax(x @ head.weight.double().T, -1)
        la, lb = logp(a), logp(b)
        return (la.exp() * (la - lb)).sum(-1)

    with torch.no_grad():
        want = exact(vtw, base)
        robust = kl_vtw_base(head_fp32(model, norm, vtw), head_fp32(model, norm, base)).double()
        naive = kl_vtw_base(head(norm(vtw)), head(norm(base))).double()
    assert 2e-5 < float(want.mean()) < 2e-4  # the regime of the authors' eta = 1e-4
    assert float((robust - want).abs().max()) < 0.02 * float(want.mean())
    assert float((naive - want).abs().mean()) > 3 * float(want.mean())  # bf16 logits would swamp it


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", [*FAMILIES, "gemma3"])  # + sliding windows, bidirectional image blocks
def test_batched_sweep_equals_each_row_alone(family, impl):
    """calibrate --batch-size: a padded batch (different lengths, vision counts, a text-only row) gives
    every row the KL its unbatched sweep gives."""
    from tiny import row_alone
    from vtwctl.calibrate import sweep_batch

    model = tiny_model(family, attn_implementation=impl, num_layers=6)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    big, small = ((8, 8), (4, 4)) if family.startswith("qwen") else ((32, 64), (32, 32))
    rows = [{"pre": 4, "post": 9, "image": big}, {"pre": 2, "post": 3, "image": small}, {"pre": 3, "post": 6}]
    batch = tiny_inputs(model, rows)
    together = sweep_batch(model, batch, k_min=1, tokens=2)
    assert together.shape == (3, 5)
    for i in range(len(rows)):
        alone = sweep_sample(model, row_alone(batch, i), k_min=1, tokens=2)  # the same tokens and pixels
        assert torch.allclose(together[i], alone, atol=1e-5, rtol=1e-4), (i, together[i], alone)
    assert float(together[0].min()) > 1e-3 and float(together[2].max()) < 1e-4  # text-only: nothing withdrawn


@pytest.mark.parametrize("family,field,value", [
    ("aya_vision", "logit_scale", 0.3),  # its forward scales the logits (transformers >= 5.25)
    ("cohere2_vision", "logit_scale", 0.3),  # its forward does not, though the text config has one
    ("paligemma", "final_logit_softcapping", 2.0),  # its forward soft-caps
    ("gemma3", "final_logit_softcapping", 2.0),  # its wrapper does not
])
def test_head_equals_the_models_own_logits(family, field, value):
    """The calibration head gives the logits the model's forward gives, whatever the wrapper applies on
    top of lm_head (the config field is set on every model; only some forwards read it)."""
    from vtwctl.calibrate import head_fp32

    model = tiny_model(family)
    setattr(model.config.get_text_config(), field, value)
    x = tiny_inputs(model, [{"pre": 3, "post": 4, "image": (32, 32)}])
    norm = next(m for name, m in model.named_modules() if name.endswith("language_model.norm"))
    seen = {}
    handle = norm.register_forward_pre_hook(lambda m, args: seen.setdefault("h", args[0]))
    with torch.no_grad():
        logits = model(**x).logits
    handle.remove()
    torch.testing.assert_close(head_fp32(model, norm, seen["h"]), logits, atol=1e-4, rtol=1e-4)
