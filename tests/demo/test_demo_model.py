"""The shipped demo model (src/vtwctl/demo/model) loads offline with stock transformers classes and works."""

from __future__ import annotations

import json
import os

import pytest

from vtwctl.demo import MODEL_DIR, shapes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Which questions: the shipped model is good at some question kinds and weaker at others (training_metrics.json:
# short-answer "What colour is the {shape}?" 0.975 and "What shape is the {colour} object?" 1.00 on the test
# split; questions about positions 0.82-0.92). So the fixed questions are, by rule, the first five short-answer
# test questions of those two kinds, in test-split order; not picked one by one.
EASY_KINDS = ("colour_of_shape", "shape_of_colour")
# On the first 60 test questions the shipped model scores 0.95 overall (mc 0.95, yes/no 1.00, short 0.90);
# chance is 0.35 (0.27 / 0.50 / 0.27). The thresholds sit two or more errors in 20 under that and far above
# chance (whole test split: 0.933; mc 0.89, yes/no 0.935, short 0.975).
MIN_SLICE_OVERALL = 0.85
MIN_SLICE_MARGIN = {"mc": 0.5, "short": 0.5, "yesno": 0.35}


def _fixed_questions(n=5):
    out = [s for s in shapes.generate("test", 60) if s["format"] == "short" and s["kind"] in EASY_KINDS]
    return out[:n]


@pytest.fixture(scope="module")
def model_and_processor():
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

    assert (MODEL_DIR / "model.safetensors").is_file(), f"demo weights missing in {MODEL_DIR}"
    proc = AutoProcessor.from_pretrained(str(MODEL_DIR), local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(str(MODEL_DIR), local_files_only=True)
    model.eval()
    assert isinstance(proc, LlavaProcessor)
    assert model.dtype == torch.float32
    return model, proc


def _prompt(proc, sample):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample["question"]}]}]
    return proc.apply_chat_template(msgs, add_generation_prompt=True)


def _inputs(proc, sample):
    text = _prompt(proc, sample)
    return text, proc(images=sample["image"], text=text, return_tensors="pt")


def test_model_files_and_size():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= names
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 25e6
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert cfg["text_config"]["num_hidden_layers"] >= 8
    assert cfg["text_config"]["hidden_size"] >= 256
    assert cfg["vision_config"]["model_type"] == "clip_vision_model"
    assert cfg["vision_feature_select_strategy"] == "default"


def test_training_metrics_recorded():
    m = json.loads((MODEL_DIR / "training_metrics.json").read_text())
    assert {"mc", "yesno", "short", "overall"} <= set(m["test"])
    for fmt in ("mc", "yesno", "short"):
        assert m["test"][fmt]["n"] == 200
        assert 0 < m["test"][fmt]["chance"] < 1
    assert m["test"]["overall"]["n"] == 600
    assert m["test"]["overall"]["accuracy"] > m["test"]["overall"]["chance"]
    assert m["curves"], "no validation curve recorded"


def test_processor_expands_image_tokens(model_and_processor):
    model, proc = model_and_processor
    sample = shapes.generate("test", 1)[0]
    text, inputs = _inputs(proc, sample)
    assert text.startswith("USER: <image>\n") and text.endswith(" ASSISTANT:")
    ids = inputs["input_ids"][0]
    n_img = int((ids == model.config.image_token_id).sum())
    assert n_img >= 144
    assert n_img == (96 // 8) ** 2  # 12x12 patches, CLS dropped ("default" strategy)
    assert n_img > len(ids) - n_img, "vision tokens must outnumber text tokens"
    assert ids[0].item() == proc.tokenizer.bos_token_id
    assert inputs["pixel_values"].shape == (1, 3, 96, 96)
    # tokenizer normalises case and splits punctuation
    tok = proc.tokenizer
    assert tok("Red.", add_special_tokens=False)["input_ids"] == tok("red .", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in tok("What colour is the square?", add_special_tokens=False)["input_ids"]


def test_greedy_generation_answers_fixed_questions(model_and_processor):
    import torch

    model, proc = model_and_processor
    fixed = _fixed_questions()
    assert len(fixed) == 5 and {s["kind"] for s in fixed} == set(EASY_KINDS)
    correct, outputs = 0, []
    for s in fixed:
        _, inputs = _inputs(proc, s)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        pred = proc.decode(new, skip_special_tokens=True).strip()
        ok = shapes.score(s["format"], pred, s["answer"]) and proc.tokenizer.eos_token_id in new
        outputs.append((s["id"], s["kind"], s["answer"], pred, new))
        correct += ok
    assert correct >= 4, outputs


def test_accuracy_far_above_chance_on_a_test_slice(model_and_processor):
    """Greedy answers to the first 60 test questions (20 per format), batched through the stock processor."""
    import torch

    model, proc = model_and_processor
    samples = shapes.generate("test", 60)
    texts = [_prompt(proc, s) for s in samples]
    inputs = proc(images=[s["image"] for s in samples], text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    preds = proc.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    hits: dict[str, list[bool]] = {}
    for s, p in zip(samples, preds):
        hits.setdefault(s["format"], []).append(shapes.score(s["format"], p.strip(), s["answer"]))
    acc = {f: sum(h) / len(h) for f, h in hits.items()}
    chance = {f: sum(s["chance"] for s in samples if s["format"] == f) / len(hits[f]) for f in hits}
    overall = sum(sum(h) for h in hits.values()) / len(samples)
    # thresholds well under the measured accuracy (docs/demo.md) and far above chance (0.27 / 0.50 / 0.27)
    assert overall >= MIN_SLICE_OVERALL, (acc, preds)
    for f, margin in MIN_SLICE_MARGIN.items():
        assert acc[f] >= chance[f] + margin, (f, acc, chance)
