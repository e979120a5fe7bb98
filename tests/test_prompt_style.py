"""``--prompt-style paper``: the authors' LLaVA conversation template (lzhxmu/VTW llava/conversation.py)."""

from __future__ import annotations

import pytest
from PIL import Image

import vtwctl
from vtwctl.attention import segment
from vtwctl.errors import VTWError

VICUNA_V1 = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
             "detailed, and polite answers to the user's questions.")


@pytest.fixture(scope="module")
def demo():
    return vtwctl.load("demo", device="cpu"), vtwctl.load("demo", device="cpu", prompt_style="paper")


def test_paper_prompt_text_is_the_authors_vicuna_v1(demo):
    hf, paper = demo
    assert hf.prompt_text("How many shapes?", images=1) == "USER: <image>\nHow many shapes? ASSISTANT:"
    assert paper.prompt_text("How many shapes?", images=1) == (
        f"{VICUNA_V1} USER: <image>\nHow many shapes? ASSISTANT:")
    assert paper.prompt_text("Compare.", images=2) == f"{VICUNA_V1} USER: <image> <image>\nCompare. ASSISTANT:"
    assert paper.prompt_text("Hi") == f"{VICUNA_V1} USER: Hi ASSISTANT:"


def test_paper_style_adds_system_tokens_and_attention_counts_them_as_system(demo):
    hf, paper = demo
    img = Image.new("RGB", (96, 96), (200, 30, 30))
    types = {}
    for name, m in (("hf", hf), ("paper", paper)):
        x = m.build_inputs("How many shapes?", images=[img])
        t = segment(x["input_ids"], m.vision_token_ids, x["attention_mask"])[0]
        types[name] = [int((t == i).sum()) for i in range(3)]  # system, vision, instruction
    system_words = len(paper.processor.tokenizer(VICUNA_V1, add_special_tokens=False)["input_ids"])
    assert types["paper"][1] == types["hf"][1] == 144  # the same image
    assert types["paper"][2] == types["hf"][2]  # the same instruction after it
    assert types["paper"][0] == types["hf"][0] + system_words  # the system prompt, all before the image
    assert system_words >= 20


def test_paper_style_is_refused_where_the_paper_has_no_template():
    from types import SimpleNamespace

    from vtwctl.loading import Loaded

    qwen = Loaded(model=SimpleNamespace(config=SimpleNamespace(text_config=None)), processor=None,
                  family="qwen2_vl", spec="qwen2-vl-7b", source="", profile={"name": "qwen2-vl-7b",
                                                                              "paper_prompt": None},
                  device="cpu", dtype=None, attn_implementation="sdpa", prompt_style="paper")
    with pytest.raises(VTWError, match="--prompt-style paper is the authors' template .*qwen2-vl-7b"):
        qwen.prompt_text("hi", images=1)
    with pytest.raises(VTWError, match="--prompt-style must be hf or paper"):
        vtwctl.load("demo", device="cpu", prompt_style="vicuna")
