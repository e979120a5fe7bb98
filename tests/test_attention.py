"""beta per token type from single-row hooks vs full eager attention maps."""

from __future__ import annotations

import pytest
import torch

from vtwctl.attention import TYPES, record, segment
from vtwctl.testing import IMAGE_ID, VEND_ID, VIDEO_ID, VSTART_ID, tiny_inputs, tiny_model


class _Loaded:
    def __init__(self, model):
        from vtwctl.engine.families import adapter_for

        self.model = model
        self.vision_token_ids = adapter_for(model).vision_token_ids(model.config)
        self.num_layers = len(model.model.language_model.layers)


def beta_from_attention_maps(model, x, steps):
    """The same statistic from output_attentions=True of the eager model (independent path)."""
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             output_attentions=True, return_dict_in_generate=True)
    ids, mask = x["input_ids"], x["attention_mask"].bool()
    s = ids.shape[1]
    vision = (ids == IMAGE_ID) | (ids == VIDEO_ID)
    first = torch.where(vision, torch.arange(s), s).min(1).values
    prompt = torch.where(torch.arange(s)[None] < first[:, None], 0, 2)
    prompt = torch.where(vision, 1, prompt)
    prompt = torch.where(mask, prompt, -1)
    steps_out = []
    for layers in out.attentions:
        per_layer = []
        for att in layers:
            row = att[:, :, -1, :].mean(1)  # [B, kv]
            kv = row.shape[-1]
            types = torch.cat([prompt, torch.full((ids.shape[0], kv - s), 3)], 1)
            beta = torch.stack([(row * (types == j)).sum(-1) for j in range(4)], -1)
            per_layer.append(beta)
        steps_out.append(torch.stack(per_layer, 1))
    return torch.stack(steps_out, 1)  # [B, T, L, 4]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "video_llava"])
def test_hooks_equal_attention_maps(family, impl):
    model = tiny_model(family, attn_implementation=impl)
    eager = tiny_model(family, attn_implementation="eager")
    image = (8, 8) if family == "qwen2_vl" else (32, 64)
    x = tiny_inputs(model, [{"pre": 3, "post": 5, "image": image}, {"pre": 4, "post": 3}])
    got = record(_Loaded(model), x, max_new_tokens=5)
    ref = beta_from_attention_maps(eager, x, 5)
    assert got.shape == ref.shape == (2, 5, len(model.model.language_model.layers), 4)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5)  # the four types sum to 1
    assert float(got[0, :, :, 1].max()) > 0.01 and float(got[1, :, :, 1].max()) == 0  # row 1 has no image


def test_under_vtw_vision_mass_is_zero_from_layer_k():
    model = tiny_model("llava")
    x = tiny_inputs(model, [{"pre": 3, "post": 5, "image": (32, 32)}, {"pre": 6, "post": 4, "image": (32, 32)}])
    got = record(_Loaded(model), x, max_new_tokens=4, k=3)
    assert float(got[:, :, 3:, 1].abs().max()) == 0.0
    assert float(got[0, :, :3, 1].min()) > 0
    assert torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5)


def test_segmentation_qwen_markers_are_text():
    ids = torch.tensor([[1, 5, 6, VSTART_ID, IMAGE_ID, IMAGE_ID, VEND_ID, 7, 8]])
    types = segment(ids, [IMAGE_ID, VIDEO_ID])
    assert [TYPES[t] for t in types[0].tolist()] == [
        "system", "system", "system", "system", "vision", "vision", "instruction", "instruction", "instruction"]


def test_cli_writes_readable_tables_and_plots(tmp_path):
    import csv
    import json

    import numpy as np

    from test_cli import vtwctl
    from vtwctl.testing import save_tiny_llava

    model_dir = tmp_path / "m"
    save_tiny_llava(model_dir)
    out = tmp_path / "att"
    res = vtwctl("attention", "--model", model_dir, "--samples", "3", "--max-new-tokens", "4", "--k", "2",
                 "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert len(data["by_layer"]) == 6 * 4 and len(data["by_token"]) == 4 * 4
    with (out / "attention_by_layer.csv").open() as f:
        rows = list(csv.DictReader(f))
    vision_deep = [float(r["mean"]) for r in rows if r["type"] == "vision" and int(r["layer"]) >= 2]
    assert vision_deep and max(vision_deep) == 0.0
    for layer in range(6):
        assert abs(sum(float(r["mean"]) for r in rows if int(r["layer"]) == layer) - 1) < 1e-5
    raw = np.load(out / "attention_raw.npz")
    assert raw["beta"].shape == (3, 4, 6, 4)
    for name in ("attention_by_layer.png", "attention_by_token.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
