"""Shared helpers for the engine tests: cached tiny models and row specs with different vision counts."""

from __future__ import annotations

import torch

from vtwctl.testing import VIDEO_FAMILIES, tiny_inputs, tiny_model
from vtwctl.testing.zoo import TINY

SUPPRESS = list(range(250, 256))  # never generate vision/marker ids
PATCH_GRIDS = ("patches", "patches16", "kimi")
EAGER_ONLY = ("got_ocr2",)  # its stock model refuses sdpa

_models: dict = {}


def model_for(family: str, impl: str = "sdpa", **kw):
    key = (family, impl, tuple(sorted(kw.items())))
    if key not in _models:
        _models[key] = tiny_model(family, attn_implementation=impl, **kw)
    return _models[key]


def sizes(family: str) -> tuple:
    """A big and a small image for ``family`` (they give different vision-token counts where the family can)."""
    layout = TINY[family].image
    if layout in PATCH_GRIDS:
        return (4, 6), (2, 4)
    if layout == "sized":
        return (32, 48), (32, 32)
    return (32, 64), (32, 32)


def rows_for(family: str, batch: bool = True) -> list[dict]:
    """One image row; with ``batch``: a second image row, a text-only row, and a video row where supported."""
    big, small = sizes(family)
    rows = [{"pre": 3, "post": 5, "image": big}]
    if batch:
        rows += [{"pre": 4, "post": 3, "image": small}, {"pre": 2, "post": 6}]
        if family in VIDEO_FAMILIES:
            rows.append({"pre": 2, "post": 3, "video": True})
    return rows


def inputs_for(family: str, impl: str = "sdpa", batch: bool = True, **kw):
    model = model_for(family, impl, **kw)
    return model, tiny_inputs(model, rows_for(family, batch))


def text_positions(x: dict) -> torch.Tensor:
    return (x["input_ids"] < 250) & x["attention_mask"].bool()


def impls(family: str) -> list[str]:
    return ["eager"] if family in EAGER_ONLY else ["eager", "sdpa"]


def row_alone(x: dict, i: int) -> dict:
    """Row ``i`` of a tiny batch on its own: its tokens without padding and only its own pixels."""
    from vtwctl.testing import IMAGE_ID, VIDEO_ID

    keep = x["attention_mask"][i].bool()
    ids = x["input_ids"][i][keep][None]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for name in ("mm_token_type_ids", "token_type_ids"):
        if name in x:
            out[name] = x[name][i][keep][None]

    def owned(token):  # which images/videos belong to row i: count vision blocks in earlier rows
        counts = [int((r.diff(prepend=torch.tensor([0])) == 1).sum()) for r in (x["input_ids"] == token).long()]
        start = sum(counts[:i])
        return start, start + counts[i]

    spans = {"image": owned(IMAGE_ID), "video": owned(VIDEO_ID)}
    for key, val in x.items():
        if key in out or key in ("input_ids", "attention_mask"):
            continue
        lo, hi = spans["video" if "video" in key else "image"]
        if hi == lo:
            continue
        grid = x.get("video_grid_thw" if "video" in key else "image_grid_thw")
        if grid is not None and key.startswith("pixel_values"):  # patch rows, grid by grid
            sizes = grid.prod(-1)
            out[key] = val[int(sizes[:lo].sum()) : int(sizes[:hi].sum())]
        else:
            out[key] = val[lo:hi]
    return out
