"""vtwctl changes nothing of the caller's process behind its back: importing it leaves torch's and dynamo's
settings alone; build_inputs leaves the caller's tokenizer as it was; a seeded generate leaves torch's random
generator as it was; nothing is added to the user's model (decoders and the withdraw() block are tracked in
vtwctl)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


def test_importing_vtwctl_changes_no_torch_or_dynamo_setting():
    modules = ["vtwctl", "vtwctl.withdraw", "vtwctl.engine.hooks", "vtwctl.engine.compiled", "vtwctl.fastv",
               "vtwctl.methods", "vtwctl.infer", "vtwctl.attention", "vtwctl.calibrate", "vtwctl.evaluate",
               "vtwctl.measure", "vtwctl.loading", "vtwctl.integrations.lmms_eval.model", "vtwctl.spec"]
    code = ("import torch, torch._dynamo\n"
            "before = torch._dynamo.config.get_config_copy()\n"
            "threads, grad, rng = torch.get_num_threads(), torch.is_grad_enabled(), torch.get_rng_state()\n"
            f"for m in {modules!r}:\n"
            "    __import__(m)\n"
            "after = torch._dynamo.config.get_config_copy()\n"
            "changed = sorted(k for k in before if before[k] != after.get(k))\n"
            "assert not changed, changed\n"
            "assert (threads, grad) == (torch.get_num_threads(), torch.is_grad_enabled())\n"
            "assert torch.equal(rng, torch.get_rng_state())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.fixture(scope="module")
def demo():
    import vtwctl

    return vtwctl.load("demo", device="cpu")


def test_build_inputs_pads_left_and_gives_the_tokenizer_back(demo):
    from PIL import Image

    tok = demo.processor.tokenizer
    saved = tok.padding_side
    try:
        tok.padding_side = "right"
        x = demo.build_inputs(["a short one", "a somewhat longer question about the shapes"],
                              images=[Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32))])
        assert not bool(x["attention_mask"][0, 0]) and bool(x["attention_mask"][:, -1].all())  # left padded
        assert tok.padding_side == "right"
    finally:
        tok.padding_side = saved


def test_a_seeded_generate_leaves_the_random_generator_alone(demo):
    from vtwctl.infer import generate

    x = demo.build_inputs("How many shapes are there?")
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = generate(demo, x, k=4, max_new_tokens=6, do_sample=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(demo, x, k=4, max_new_tokens=6, do_sample=True, seed=7)
    assert a.tokens == b.tokens  # the seed still decides the draw


def test_nothing_is_added_to_the_model():
    import gc
    import weakref

    from vtwctl.engine.compiled import decoder_for
    from vtwctl.engine.hooks import withdraw
    from vtwctl.methods import context
    from vtwctl.testing import tiny_model

    model = tiny_model("llava")
    before = set(model.__dict__)
    with withdraw(model, 2):
        with pytest.raises(RuntimeError, match="do not nest"):
            with withdraw(model, 3):
                pass
        assert set(model.__dict__) == before
    with context(model, "rand", 2, seeds=[0]):
        pass
    dec = decoder_for(model, 2)
    assert decoder_for(model, 2) is dec and set(model.__dict__) == before
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the kept decoder does not keep the model alive
    with pytest.raises(RuntimeError, match="freed"):
        dec.prefill({}, 1)
