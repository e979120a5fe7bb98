"""Selection policies over one engine (vtwctl.engine.policies): the public interface is enough to write a new
method in a few lines, and what the engine runs equals the independent masked reference with the
policy's tokens hidden from layers >= K."""

from __future__ import annotations

import pytest
import torch

from reference import reference_logits
from vtwctl import policies
from vtwctl.engine.hooks import apply
from vtwctl.engine.policies import Policy, Tokens
from vtwctl.testing import IMAGE_ID, tiny_inputs, tiny_model

ROWS = [{"pre": 3, "post": 5, "image": (32, 64)}, {"pre": 4, "post": 3, "image": (32, 32)}, {"pre": 2, "post": 6}]


class EveryOtherVision(Policy):
    """A method written against the public interface only: every second vision token of a row leaves."""

    name = "every-other"

    def __init__(self, k: int):
        super().__init__(k)
        self.seen: list[Tokens] = []

    def select(self, tokens: Tokens) -> torch.Tensor:
        self.seen.append(tokens)
        rank = tokens.vision.long().cumsum(1)
        return tokens.vision & (rank % 2 == 0)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava", attn_implementation="eager")


def test_a_new_policy_in_a_few_lines_runs_as_the_masked_reference(model):
    x = tiny_inputs(model, ROWS)
    vision = (x["input_ids"] == IMAGE_ID) & x["attention_mask"].bool()
    drop = vision & (vision.long().cumsum(1) % 2 == 0)
    assert int(drop.sum()) > 0 and bool((vision & ~drop).any())
    for k in (1, 3):
        policy = EveryOtherVision(k)
        with torch.no_grad(), apply(model, policy):
            out = model(**x).logits
        tokens = policy.seen[0]
        assert tokens.past == 0 and tokens.hidden.shape[:2] == x["input_ids"].shape
        assert torch.equal(tokens.vision.cpu(), vision) and torch.equal(tokens.valid.cpu(), x["attention_mask"].bool())
        kept = x["attention_mask"].bool() & ~drop
        ref = reference_logits(model, x, k, drop=drop)
        assert torch.allclose(out[kept], ref[kept], atol=1e-4)
        every = reference_logits(model, x, k)  # all vision tokens withdrawn (VTW): another result
        assert not torch.allclose(out[kept & ~vision], every[kept & ~vision], atol=1e-3)


def test_the_registry_names_each_method_by_one_small_class():
    for method in ("vtw", "vtw-random", "rand", "fastv"):
        cls = policies.get(method)
        assert issubclass(cls, Policy) and cls.name == method
    assert policies.get("vtw-random")(16, seed=0).for_sample("q1", 32).k in range(8, 25)
    with pytest.raises(ValueError, match="out of range"):
        with apply(tiny_model("llava"), policies.get("vtw")(7)):
            pass
