"""VisionZip as a pre-language-model reducer, against an independent rebuild: the authors' selection and merge
(``CLIPVisionTower_VisionZip.forward``) transcribed here on the tower's eager ``output_attentions`` /
``output_hidden_states`` (not engine/reducers/visionzip.py), the projector applied by hand and the features
placed at the image positions of a prompt cut by hand; the stock model then runs on those ``inputs_embeds``.
VisionZip+VTW against the masked VTW reference on the same hand-built embeds."""

from __future__ import annotations

import pytest
import torch

from reference import reference_forward
from vtwctl.engine.reducers.visionzip import DEFAULTS, VisionZip, visionzip_vtw
from vtwctl.errors import VTWError
from vtwctl.testing import IMAGE_ID, PAD_ID, tiny_inputs, tiny_model

SUPPRESS = list(range(250, 256))
ROWS = [{"pre": 3, "post": 6, "image": True}, {"pre": 6, "post": 2, "image": True}, {"pre": 4, "post": 3}]


def authors_features(model, pixels, dominant, contextual, cls=True):
    """The authors' VisionZip features [N, dominant + contextual, D] of ``pixels``, transcribed from
    ``CLIPVisionTower_VisionZip.forward`` (their ``dominant_num`` is ``dominant - 1``: the CLS is kept besides).
    ``model`` runs eager attention so that the tower returns its attention weights. Without a CLS (SigLIP,
    ours): rank by the attention each token receives, averaged over queries and heads; keep ``dominant``."""
    v = model.config.vision_feature_layer
    assert v < 0  # attentions[v] and hidden_states[v] are then the same layer, as the authors' [-2] and [-2]
    tower = model.model.vision_tower
    layer = tower.encoder.layers[v]
    with torch.no_grad():
        out = tower(pixels, output_hidden_states=True, output_attentions=True)
        attn_weights, hidden_states = out.attentions[v], out.hidden_states[v]
        # their CLIPAttention_forward returns raw_key_states.mean(1): k_proj of the layer's normed input, head mean
        x = layer.layer_norm1(out.hidden_states[v - 1])
        heads = layer.self_attn.num_heads
        metric = layer.self_attn.k_proj(x).view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2).mean(1)
    b = hidden_states.shape[0]
    if cls:
        dominant_num = dominant - 1
        cls_attention = attn_weights[:, :, 0, 1:]
        cls_attention_sum = cls_attention.sum(dim=1)
        topk_indices = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
        all_indices = torch.cat([torch.zeros((b, 1), dtype=topk_indices.dtype), topk_indices], dim=1)
        n_dom = dominant_num + 1
    else:
        all_indices = attn_weights.mean(1).mean(1).topk(dominant, dim=1).indices
        n_dom = dominant
    mask = torch.ones_like(hidden_states[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden_states.masked_select(~mask.unsqueeze(-1)).view(b, n_dom, hidden_states.shape[2])
    metric_filtered = metric[mask].view(b, hidden_states.shape[1] - n_dom, metric.shape[2])
    hidden_states_filtered = hidden_states.masked_select(mask.unsqueeze(-1)).view(
        b, hidden_states.shape[1] - n_dom, hidden_states.shape[2])
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, metric_normalized.shape[1] // contextual)
    target_indices = torch.arange(0, metric_normalized.shape[1], step)[:contextual]
    target_tokens = metric_normalized[:, target_indices, :]
    tokens_to_merge = metric_normalized[:, ~torch.isin(torch.arange(metric_normalized.shape[1]), target_indices), :]
    similarity = torch.bmm(tokens_to_merge, target_tokens.transpose(1, 2))
    assign_one_hot = torch.zeros(tokens_to_merge.shape[0], tokens_to_merge.shape[1], contextual,
                                 dtype=hidden_states_filtered.dtype)
    assign_one_hot.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    hidden_to_merge = hidden_states_filtered[:, ~torch.isin(torch.arange(hidden_states_filtered.shape[1]),
                                                            target_indices), :]
    aggregated_hidden = torch.bmm(assign_one_hot.transpose(1, 2), hidden_to_merge) / counts
    target_hidden = hidden_states_filtered[:, target_indices, :]
    contextual_tokens = target_hidden + aggregated_hidden
    return torch.cat([dominant_tokens, contextual_tokens], dim=1), all_indices, counts


def cut_prompt(x, per_image, kept, side):
    """The prompt with each image's run of ``per_image`` placeholders cut to ``kept``, padded again on ``side``
    (plain Python over the rows' real tokens)."""
    rows = []
    for ids, mask in zip(x["input_ids"].tolist(), x["attention_mask"].tolist()):
        out, seen = [], 0
        for t, m in zip(ids, mask):
            if not m:
                continue
            if t == IMAGE_ID:
                seen += 1
                if (seen - 1) % per_image >= kept:
                    continue
            out.append(t)
        rows.append(out)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    return ids, mask


def hand_built(model, eager, x, dominant, contextual, side, cls=True):
    """(inputs_embeds, attention_mask, cut ids, merge counts): the LLaVA way, projector on the authors' features,
    placed at the image positions of the hand-cut prompt."""
    feats, _, counts = authors_features(eager, x["pixel_values"], dominant, contextual, cls)
    per_image = int((x["input_ids"] == IMAGE_ID).sum()) // x["pixel_values"].shape[0]
    ids, mask = cut_prompt(x, per_image, dominant + contextual, side)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == IMAGE_ID] = model.model.multi_modal_projector(feats).reshape(-1, embeds.shape[-1])
    return embeds, mask, ids, counts


def stock_greedy(model, embeds, mask, steps, k=None, vision=None):
    """Greedy tokens from recomputing the whole sequence on ``embeds`` at each step (stock, or the masked VTW
    reference at ``k`` with ``vision`` the image positions)."""
    new = []
    for _ in range(steps):
        with torch.no_grad():
            inputs = {"inputs_embeds": embeds, "attention_mask": mask}
            logits = (model(**inputs).logits if k is None else
                      reference_forward(model, inputs, k, drop=vision).logits)[:, -1]
        logits[:, SUPPRESS] = float("-inf")
        tok = logits.argmax(-1, keepdim=True)
        new.append(tok)
        with torch.no_grad():
            embeds = torch.cat([embeds, model.get_input_embeddings()(tok)], 1)
        mask = torch.cat([mask, torch.ones_like(tok)], 1)
        if vision is not None:
            vision = torch.cat([vision, torch.zeros_like(tok, dtype=torch.bool)], 1)
    return torch.cat(new, 1)


def siglip_llava(impl="sdpa", seed=0):
    """A tiny LLaVA whose tower is SigLIP (no CLS), feeding the last layer's every token ("full")."""
    import transformers as tf

    from vtwctl.testing.zoo import siglip, text_cfg

    config = tf.LlavaConfig(text_config=text_cfg(), vision_config=siglip(), image_token_id=IMAGE_ID,
                            vision_feature_layer=-1, vision_feature_select_strategy="full")
    config._attn_implementation = impl
    torch.manual_seed(seed)
    model = tf.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None
    return model


def build(tower, impl):
    if tower == "clip":
        return tiny_model("llava", attn_implementation=impl), tiny_model("llava", attn_implementation="eager")
    return siglip_llava(impl), siglip_llava("eager")


SETTINGS = {"clip": (6, 3), "siglip": (5, 3)}  # of 17 (CLS + 16 patches) and 16 tokens


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_visionzip_matches_the_authors_rule(tower, impl, side):
    model, eager = build(tower, impl)
    dominant, contextual = SETTINGS[tower]
    vz = VisionZip(dominant, contextual)
    assert vz.refusal(model) is None
    x = tiny_inputs(model, ROWS, padding=side)
    embeds, mask, ids, counts = hand_built(model, eager, x, dominant, contextual, side, cls=tower == "clip")
    assert bool((counts > 1).any()) and bool((counts == 1).any())  # merges of several tokens, and of one or none
    y = vz.shrink(model, x)
    assert torch.equal(y["input_ids"], ids) and torch.equal(y["attention_mask"], mask)
    assert torch.equal(y["pixel_values"], x["pixel_values"])
    with torch.no_grad():
        ref = model(inputs_embeds=embeds, attention_mask=mask).logits
        with vz.apply(model):
            got = model(**y).logits
        stock = model(**x).logits
    real = mask.bool()
    assert torch.allclose(got[real], ref[real], atol=1e-4)
    assert not torch.allclose(got[:, -1], stock[:, -1], atol=1e-3)  # the features did change
    with torch.no_grad(), vz.apply(model):  # greedy decoding with the KV cache against recomputing
        gen = model.generate(**y, max_new_tokens=4, do_sample=False, suppress_tokens=SUPPRESS)
    assert torch.equal(gen[:, ids.shape[1]:], stock_greedy(model, embeds, mask, 4))
    with torch.no_grad():  # outside the block the model is stock again
        assert torch.equal(model(**x).logits, stock)


def test_a_wrong_rule_fails_the_comparison():
    """Features of the first patches, or dominant tokens ranked at another layer, or no CLS kept, give other
    logits: the comparison above can fail."""
    model, eager = build("clip", "sdpa")
    x = tiny_inputs(model, ROWS)
    vz = VisionZip(6, 3)
    y = vz.shrink(model, x)
    with torch.no_grad(), vz.apply(model):
        got = model(**y).logits
    real = y["attention_mask"].bool()
    embeds, mask, _, _ = hand_built(model, eager, x, 6, 3, "left")
    _, order, _ = authors_features(eager, x["pixel_values"], 6, 3)
    assert not torch.equal(order[:, 1:].sort(1).values, torch.arange(1, 6).expand(2, 5))  # not just the first ones
    wrong = []
    with torch.no_grad():
        first = eager.model.vision_tower(x["pixel_values"], output_hidden_states=True).hidden_states[-2][:, :9]
        e = embeds.clone()
        e[y["input_ids"] == IMAGE_ID] = model.model.multi_modal_projector(first).reshape(-1, e.shape[-1])
        wrong.append(e)
        eager.config.vision_feature_layer = -1  # rank at the last layer instead
        try:
            wrong.append(hand_built(model, eager, x, 6, 3, "left")[0])
        finally:
            eager.config.vision_feature_layer = -2
        for e in wrong:
            assert not torch.allclose(model(inputs_embeds=e, attention_mask=mask).logits[real], got[real], atol=1e-4)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_visionzip_vtw_matches_the_masked_reference(impl):
    """VisionZip's tokens in layers < K, none after: the engine inside vz.apply against the masked VTW reference
    run on the hand-built VisionZip embeds (text positions; greedy decoding with the KV cache)."""
    model, eager = build("clip", impl)
    vz, k = VisionZip(6, 3), 3
    x = tiny_inputs(model, ROWS)
    embeds, mask, ids, _ = hand_built(model, eager, x, 6, 3, "left")
    vision = ids == IMAGE_ID
    y = vz.shrink(model, x)
    with torch.no_grad():
        ref = reference_forward(model, {"inputs_embeds": embeds, "attention_mask": mask}, k, drop=vision).logits
        plain = model(inputs_embeds=embeds, attention_mask=mask).logits
        with visionzip_vtw(model, k, vz):
            got = model(**y).logits
            gen = model.generate(**y, max_new_tokens=4, do_sample=False, suppress_tokens=SUPPRESS,
                                 return_dict_in_generate=True)
    text = mask.bool() & ~vision
    assert torch.allclose(got[text], ref[text], atol=1e-4)
    assert not torch.allclose(ref[:, -1], plain[:, -1], atol=1e-3)  # withdrawal changes the text tokens
    tokens = gen.sequences[:, ids.shape[1]:]
    assert torch.equal(tokens, stock_greedy(model, embeds, mask, 4, k=k, vision=vision))
    steps = tokens.shape[1] - 1  # layers >= K cache text only; layers < K the reduced prompt
    assert gen.past_key_values.layers[k - 1].keys.shape[-2] == ids.shape[1] + steps
    assert gen.past_key_values.layers[k].keys.shape[-2] == int((mask.bool() & ~vision).sum(1).max()) + steps


def test_demo_model_takes_the_authors_defaults():
    """The shipped demo model is LLaVA with a CLIP tower of 144 patches (+ CLS): 54 + 10 tokens per image."""
    import numpy as np
    from PIL import Image

    from vtwctl.demo import load_model, load_processor

    model, eager = load_model(), load_model(attn_implementation="eager")
    proc = load_processor()
    vz = VisionZip()
    assert (vz.dominant, vz.contextual) == (DEFAULTS["dominant"], DEFAULTS["contextual"]) == (54, 10)
    assert vz.refusal(model) is None and vz.vision_tokens(144) == 64
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    x = dict(proc(images=[img], text=["USER: <image>\nwhat shape is there? ASSISTANT:"], return_tensors="pt"))
    image_id = model.config.image_token_id
    assert int((x["input_ids"] == image_id).sum()) == 144
    y = vz.shrink(model, x)
    assert int((y["input_ids"] == image_id).sum()) == 64
    feats, _, _ = authors_features(eager, x["pixel_values"], 54, 10)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(y["input_ids"])
        embeds[y["input_ids"] == image_id] = model.model.multi_modal_projector(feats).reshape(-1, embeds.shape[-1])
        ref = model(inputs_embeds=embeds, attention_mask=y["attention_mask"]).logits
        with vz.apply(model):
            got = model(**y).logits
    assert torch.allclose(got, ref, atol=1e-4)
    with pytest.raises(VTWError, match="145 tokens"):
        with VisionZip(140, 10).apply(model):
            pass


@pytest.mark.parametrize("family, words", [("qwen2_vl", "merger"), ("llava_next", "AnyRes"), ("gemma3", "pools"),
                                           ("vipllava", "several tower layers")])
def test_other_families_are_refused(family, words):
    model = tiny_model(family)
    vz = VisionZip(2, 1)
    why = vz.refusal(model)
    assert why is not None and why.startswith(family) and words in why
    with pytest.raises(VTWError, match=family):
        with vz.apply(model):
            pass
    with pytest.raises(VTWError, match=family):
        vz.shrink(model, {"input_ids": torch.ones(1, 3, dtype=torch.long)})


def test_llava_settings_it_cannot_run_are_refused():
    from vtwctl.errors import ArgumentError

    model = tiny_model("llava")
    vz = VisionZip(6, 3)
    for name, value, words in (("vision_feature_layer", [-2, -1], "several tower layers"),
                               ("vision_feature_layer", 0, "embeddings"),
                               ("vision_feature_layer", -3, "embeddings")):
        old = getattr(model.config, name)
        setattr(model.config, name, value)
        try:
            assert words in vz.refusal(model)
        finally:
            setattr(model.config, name, old)
    siglip = siglip_llava()
    siglip.config.vision_feature_select_strategy = "default"  # would drop a first "CLS" that SigLIP lacks
    assert "SigLIP" in vz.refusal(siglip)
    assert "17 tokens" in VisionZip().refusal(model)  # the authors' 54 + 10 exceed a 16-patch tower
    assert VisionZip(16, 1).refusal(model) is None  # every token: CLS + 16 patches
    for bad in ((0, 3), (3, -1), (True, 3), (2.5, 3)):
        with pytest.raises(ArgumentError):
            VisionZip(*bad)
    with pytest.raises(ArgumentError):
        VisionZip(100, 10).vision_tokens(64)


def test_full_strategy_and_every_token_kept():
    """With 'full' the stock prompt has 17 tokens per image (CLS + 16); VisionZip(17 - c, c) keeps them all."""
    model, eager = build("clip", "sdpa")
    model.config.vision_feature_select_strategy = eager.config.vision_feature_select_strategy = "full"
    x = tiny_inputs(model, ROWS[:2])
    assert int((x["input_ids"] == IMAGE_ID).sum()) == 34
    vz = VisionZip(12, 5)
    y = vz.shrink(model, x)
    embeds, mask, ids, _ = hand_built(model, eager, x, 12, 5, "left")
    assert torch.equal(y["input_ids"], ids)
    with torch.no_grad():
        ref = model(inputs_embeds=embeds, attention_mask=mask).logits
        with vz.apply(model):
            got = model(**y).logits
    assert torch.allclose(got[mask.bool()], ref[mask.bool()], atol=1e-4)


def test_apply_acts_on_its_own_thread_only_and_does_not_nest():
    import threading

    model = tiny_model("llava")
    x = tiny_inputs(model, ROWS)
    vz = VisionZip(6, 3)
    with torch.no_grad():
        stock = model(**x).logits
    seen = {}
    with torch.no_grad(), vz.apply(model):
        t = threading.Thread(target=lambda: seen.setdefault("other", model(**x).logits))
        t.start()
        t.join()
        with pytest.raises(RuntimeError, match="nest"):
            with vz.apply(model):
                pass
        model(**vz.shrink(model, x))
    assert torch.equal(seen["other"], stock)


def test_shrink_keeps_other_per_token_tensors_and_text_only_batches():
    model = tiny_model("llava")
    x = tiny_inputs(model, ROWS, padding="right")
    x["labels"] = torch.where(x["attention_mask"].bool(), x["input_ids"], -100)
    y = VisionZip(6, 3).shrink(model, x)
    assert torch.equal(torch.where(y["attention_mask"].bool(), y["input_ids"], -100), y["labels"])
    assert y["input_ids"].shape[1] == x["input_ids"].shape[1] - 7  # the longest row lost 16 - 9 image tokens
    text = {k: v for k, v in x.items() if not k.startswith("pixel")}
    assert VisionZip(6, 3).shrink(model, text) == text
