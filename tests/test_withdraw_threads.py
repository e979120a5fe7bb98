"""One model used from several threads at once: each thread's withdraw() block changes its own calls only
(other K, or stock, in the other threads), and a wrong K is an ``ArgumentError`` that says what K must be."""

from __future__ import annotations

import threading

import pytest
import torch

from vtwctl import withdraw
from vtwctl.errors import ArgumentError


def _inputs(demo):
    from vtwctl.demo import shapes

    q = shapes.make_sample("test", 2)
    return demo.build_inputs(q["question"], images=[q["image"]])


def _answer(model, x, k):
    """The last position's logits of a forward call and a greedy answer, inside a block at ``k`` (None: stock)."""
    with torch.inference_mode(), (withdraw(model, k) if k is not None else _nothing()):
        return model(**x).logits[:, -1].float(), model.generate(**x, max_new_tokens=4, do_sample=False).tolist()


def test_threads_share_one_model(demo_loaded):
    model, x = demo_loaded.model, _inputs(demo_loaded)
    ks = (2, 5, None)  # two blocks with different K and a stock caller, all at once
    ref = {k: _answer(model, x, k) for k in ks}
    for a, b in ((2, 5), (2, None), (5, None)):  # the check can fail: K changes the logits
        assert (ref[a][0] - ref[b][0]).abs().max() > 1e-3
    barrier = threading.Barrier(len(ks) + 1)  # + one more block with the same K as another thread's
    got, errors = {}, []

    def work(name, k):
        try:
            with torch.inference_mode(), (withdraw(model, k) if k is not None else _nothing()):
                barrier.wait(timeout=60)  # every block is entered before anyone runs the model
                got[name] = (k, [(model(**x).logits[:, -1].float(),
                                  model.generate(**x, max_new_tokens=4, do_sample=False).tolist())
                                 for _ in range(2)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=work, args=(f"t{i}", k)) for i, k in enumerate((*ks, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(got) == 4
    for k, outs in got.values():
        for logits, tokens in outs:
            torch.testing.assert_close(logits, ref[k][0], atol=1e-4, rtol=1e-4)
            assert tokens == ref[k][1]


def test_generate_in_threads_with_different_k(demo_loaded):
    """``vtwctl.generate`` (its own block per call) from two threads at once, each with its own K."""
    import vtwctl

    x = _inputs(demo_loaded)
    ref = {k: vtwctl.generate(demo_loaded, x, k=k, max_new_tokens=4).tokens for k in (2, 5)}
    got, errors = {}, []

    def work(k):
        try:
            got[k] = [vtwctl.generate(demo_loaded, x, k=k, max_new_tokens=4).tokens for _ in range(3)]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"K={k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(k,)) for k in (2, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert got == {k: [ref[k]] * 3 for k in (2, 5)}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_blocks_still_do_not_nest_in_one_thread(demo_loaded):
    model = demo_loaded.model
    with withdraw(model, 2):
        with pytest.raises(RuntimeError, match="in this thread; blocks do not nest"):
            with withdraw(model, 3):
                pass
    with withdraw(model, 3):  # the refused block left nothing behind
        pass


@pytest.mark.parametrize("k,message", [(None, "K is None: give the layer"),
                                       (1.5, r"K must be an integer layer index in 0..\d+ .*got 1.5 \(float\)"),
                                       ("3", r"got '3' \(str\)"), (99, "K=99 is out of range")])
def test_a_bad_k_is_an_argument_error(demo_loaded, k, message):
    with pytest.raises(ArgumentError, match=message):
        with withdraw(demo_loaded.model, k):
            pass
