"""``vtwctl profile`` as a library: TFLOPs and measured cost of baseline vs VTW vs FastV rows.

``flops_rows`` needs no weights (dimensions from a profile or a config); ``measured_rows`` runs the
real model through the measurement protocol of ``measure.py`` and adds the FLOPs of each row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import VTWError

FLOP_METHODS = ("paper", "exact", "counted")


@dataclass
class Row:
    method: str  # baseline | vtw | fastv
    k: int | None
    tflops: float
    ratio: float = 1.0
    prefill_s: float | None = None
    decode_s_per_token: float | None = None
    total_s: float | None = None
    peak_memory_bytes: int | None = None
    kv_cache_bytes: int | None = None
    kv_cache_bytes_prefill: int | None = None
    device_memory_used_bytes: int | None = None
    spread: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


@dataclass
class ProfileReport:
    model: str
    k: int | None
    tokens: dict
    method: str
    count: str
    rows: list[Row]
    sweep: list[Row] = field(default_factory=list)
    fastv: dict = field(default_factory=dict)
    calibrations: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    source: str | None = None  # what was measured ("shapes/test sample 0", "your prompt"); None: FLOPs only
    schema: int = 2

    def to_dict(self) -> dict:
        """Rows under their method names ("baseline", "vtw", "fastv"); the FastV settings under
        "fastv_settings" and in the fastv row ("drop_ratio"), so the row cannot hide them."""
        out: dict[str, Any] = {"model": self.model, "k": self.k, "tokens": self.tokens, "method": self.method,
                               "count": self.count, "fastv_settings": dict(self.fastv), "source": self.source}
        for r in self.rows:
            out[r.method] = r.to_dict()
        if "fastv" in out and self.fastv:
            out["fastv"]["drop_ratio"] = self.fastv.get("ratio")
        if self.sweep:
            out["sweep"] = [r.to_dict() for r in self.sweep]
        out["calibrations"] = self.calibrations
        out["env"] = self.env
        out["schema"] = self.schema
        return out


def _flops(dims, method: str, vision: int, text: int, k=None, fastv=None, count: str = "all",
           decode_tokens: int = 0) -> float:
    from .flops import exact_flops, paper_flops

    if method == "paper":
        return paper_flops(dims, vision, text, k=k, fastv=fastv, count=count)
    if count == "vision":
        # the vision tokens' share: difference to a run without them, in the layers where they are present
        full = exact_flops(dims, vision, text, k=k, fastv=fastv, decode_tokens=decode_tokens)
        none = exact_flops(dims, 0, text, decode_tokens=decode_tokens)
        return (full.prefill + full.decode_total) - (none.prefill + none.decode_total)
    rep = exact_flops(dims, vision, text, k=k, fastv=fastv, decode_tokens=decode_tokens)
    return rep.prefill + rep.lm_head + rep.decode_total


def flops_rows(dims, vision: int, text: int, ks: list[int], fastv_k: int = 2, fastv_ratio: float = 0.5,
               method: str = "paper", count: str = "all", decode_tokens: int = 0) -> tuple[list[Row], list[Row]]:
    """Rows baseline / vtw (first K) / fastv, and the VTW sweep over every K, in TFLOPs."""
    if method not in ("paper", "exact"):
        raise VTWError("--flops-only works with --method paper or exact (counted needs the weights)")
    base = _flops(dims, method, vision, text, count=count, decode_tokens=decode_tokens)
    fv = _flops(dims, method, vision, text, fastv=(fastv_k, fastv_ratio), count=count, decode_tokens=decode_tokens)
    sweep = []
    for k in ks:
        f = _flops(dims, method, vision, text, k=k, count=count, decode_tokens=decode_tokens)
        sweep.append(Row("vtw", k, f / 1e12, f / base))
    rows = [Row("baseline", None, base / 1e12, 1.0), sweep[0], Row("fastv", fastv_k, fv / 1e12, fv / base)]
    return rows, sweep


def measured_rows(loaded, inputs: dict, ks: list[int], fastv_k: int = 2, fastv_ratio: float = 0.5,
                  method: str = "exact", count: str = "all", max_new_tokens: int = 16, warmup: int = 1,
                  repeats: int = 5, positions: str = "keep", progress=None) -> tuple[list[Row], list[Row], dict]:
    """Measure baseline, VTW at each K and FastV on ``inputs``; FLOPs of each row by ``method``."""
    from .flops import Dims, counted_flops, vision_text_counts
    from .measure import measure_many

    model = loaded.model
    vision, text = vision_text_counts(model, inputs["input_ids"])
    dims = Dims.from_config(model.config)
    decode = max(2, max_new_tokens) - 1

    def tflops(k=None, fastv=None) -> float:
        if method == "counted":
            if fastv is not None:
                from .fastv import fastv as fastv_ctx

                with fastv_ctx(model, *fastv):
                    return counted_flops(model, inputs, None, logits_to_keep=1, use_cache=False) / 1e12
            return counted_flops(model, inputs, k, logits_to_keep=1, use_cache=False) / 1e12
        return _flops(dims, method, vision, text, k=k, fastv=fastv, count=count, decode_tokens=decode) / 1e12

    plan = [("baseline", None)] + [("vtw", k) for k in ks] + [("fastv", None)]
    ms = measure_many(loaded, inputs, plan, fastv_k, fastv_ratio, max_new_tokens, warmup, repeats, positions,
                      progress=progress)
    rows: list[Row] = []
    for (name, k), m in zip(plan, ms):
        f = tflops(k=k, fastv=(fastv_k, fastv_ratio) if name == "fastv" else None)
        rows.append(Row(name, k if name == "vtw" else (fastv_k if name == "fastv" else None), f,
                        prefill_s=m.prefill.median, decode_s_per_token=m.decode_s_per_token, total_s=m.total.median,
                        peak_memory_bytes=m.peak_memory_bytes, kv_cache_bytes=m.kv_cache_bytes_end,
                        kv_cache_bytes_prefill=m.kv_cache_bytes_prefill,
                        device_memory_used_bytes=m.device_memory_used_bytes,
                        spread={"prefill": asdict(m.prefill), "total": asdict(m.total), "repeats": repeats,
                                "warmup": warmup}))
    base = rows[0].tflops
    for r in rows:
        r.ratio = r.tflops / base if base else float("nan")
    sweep = rows[1:-1]
    return [rows[0], sweep[0], rows[-1]], sweep, {"vision": vision, "text": text}
