"""The cost of VTW as ``vtwctl profile`` shows it: TFLOPs and measured rows of baseline vs VTW vs FastV.

``flops_rows`` needs no weights (dimensions from a profile or a config); ``measured_rows`` runs the
real model through the measurement protocol of ``measure.py`` and adds the FLOPs of each row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import VTWError

FLOP_METHODS = ("paper", "exact", "counted", "calflops")
ROWS = ("stock", "vtw", "fastv")  # the default rows; any of methods.METHODS
FASTV_PRESETS = {"paper": (2, 0.5), "authors": (3, 0.5)}  # the paper's text; the authors' fastv_kvcache.py


def row_settings(spec, rows) -> dict:
    """The settings of each row that has any (``RunSpec.options``; tuples as lists), for reports."""
    from .evaluate import settings_record

    return {row: settings_record(spec, row) for row in rows if spec.options(row)}


def row_key(method: str) -> str:
    """A row's name in reports: the stock model's row is "baseline" (the JSON key since schema 1)."""
    return "baseline" if method == "stock" else method


@dataclass
class Row:
    method: str  # baseline, or a method of engine.registry (vtw, fastv, dart, visionzip+vtw, ...)
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
    dart: dict = field(default_factory=dict)  # DART's settings, where a dart row is shown
    settings: dict = field(default_factory=dict)  # each shown method's settings (``RunSpec.options``), by row
    calibrations: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    source: str | None = None  # what was measured ("shapes/test sample 0", "your prompt"); None: FLOPs only
    schema: int = 2

    def to_dict(self) -> dict:
        """Rows under their method names ("baseline", "vtw", "fastv"); the FastV settings under
        "fastv_settings" and in the fastv row ("drop_ratio"), so the row cannot hide them."""
        out: dict[str, Any] = {"model": self.model, "k": self.k, "tokens": self.tokens, "flops": self.method,
                               "method": self.method,  # deprecated: the counting method, now "flops"
                               "rows": [r.method for r in self.rows], "count": self.count,
                               "fastv_settings": dict(self.fastv), "source": self.source}
        for r in self.rows:
            out[r.method] = r.to_dict()
        if "fastv" in out and self.fastv:
            out["fastv"]["drop_ratio"] = self.fastv.get("ratio")
        if self.dart:
            out["dart_settings"] = dict(self.dart)
            if "dart" in out:
                out["dart"].update(drop_ratio=self.dart.get("ratio"), pivots=self.dart.get("pivots"))
        for name, options in self.settings.items():
            if row_key(name) in out:
                out[row_key(name)]["settings"] = dict(options)
        if self.sweep:
            out["sweep"] = [r.to_dict() for r in self.sweep]
        out["calibrations"] = self.calibrations
        out["env"] = self.env
        out["schema"] = self.schema
        return out


def _flops(dims, method: str, vision: int, text: int, k=None, fastv=None, count: str = "all",
           decode_tokens: int = 0, dart=None, per_layer=None) -> float:
    from .flops import calflops_flops, exact_flops, paper_flops

    if method == "paper":
        return paper_flops(dims, vision, text, k=k, fastv=fastv, count=count, dart=dart, per_layer=per_layer)
    if method == "calflops":
        if count == "vision":
            raise VTWError("--count vision is the paper's Table 3 counting: use it with --flops paper or exact")
        return calflops_flops(dims, vision, text, k=k, fastv=fastv, dart=dart, per_layer=per_layer)
    if count == "vision":
        # the vision tokens' share: difference to a run without them, in the layers where they are present
        full = exact_flops(dims, vision, text, k=k, fastv=fastv, decode_tokens=decode_tokens, dart=dart,
                           per_layer=per_layer)
        none = exact_flops(dims, 0, text, decode_tokens=decode_tokens)
        return (full.prefill + full.decode_total) - (none.prefill + none.decode_total)
    rep = exact_flops(dims, vision, text, k=k, fastv=fastv, decode_tokens=decode_tokens, dart=dart,
                      per_layer=per_layer)
    return rep.prefill + rep.lm_head + rep.decode_total


def _row_flops(dims, method: str, row: str, vision: int, text: int, k: int | None, spec, count: str,
               decode_tokens: int) -> float:
    """FLOPs of one row (a method of ``engine.registry``, with ``spec``'s settings): a reducer first gives the
    vision tokens the language model receives; Rand drops as many tokens as VTW at the same K (same count);
    VTW† averages VTW over its K range (Table 2's "≈"); the field's methods count their own layers."""
    from .engine.registry import parts
    from .methods import RANDOM_K_SPAN

    reducer, policy = parts(row)
    if reducer is not None:
        vision = reducer.vision_tokens(vision, spec.settings.get(reducer.name))
    if policy.name == "stock":
        return _flops(dims, method, vision, text, count=count, decode_tokens=decode_tokens)
    if policy.name == "vtw-random":
        n = dims.num_layers
        ks = range(max(0, k - RANDOM_K_SPAN), min(n, k + RANDOM_K_SPAN) + 1)
        return sum(_flops(dims, method, vision, text, k=kk, count=count, decode_tokens=decode_tokens)
                   for kk in ks) / len(ks)
    if policy.uses_k:
        return _flops(dims, method, vision, text, k=k, count=count, decode_tokens=decode_tokens)
    per_layer = policy.vision_by_layer(dims.num_layers, vision, text, spec.settings.get(policy.name))
    return _flops(dims, method, vision, text, count=count, decode_tokens=decode_tokens, per_layer=per_layer)


def row_layer(spec, row: str, k: int | None) -> int | None:
    """The K a report shows for ``row``: the method's own layer, the run's K, or None (the stock model)."""
    from .engine.registry import parts

    own = spec.own_layer(row)
    if own is not None:
        return own
    return k if parts(row)[1].uses_k else None


def flops_rows(dims, vision: int, text: int, ks: list[int], spec=None, method: str = "paper", count: str = "all",
               decode_tokens: int = 0, rows: tuple[str, ...] = ROWS) -> tuple[list[Row], list[Row]]:
    """The ``rows`` (methods, in order; VTW at the first K) and the VTW sweep over every K, in TFLOPs; ``spec``
    (a ``RunSpec``) holds the methods' settings (``spec.settings``)."""
    from .spec import RunSpec

    spec = spec if spec is not None else RunSpec()
    if method not in ("paper", "exact", "calflops"):
        raise VTWError("--flops-only works with --flops paper, exact or calflops (counted needs the weights)")
    base = _flops(dims, method, vision, text, count=count, decode_tokens=decode_tokens)
    sweep = []
    for k in ks:
        f = _flops(dims, method, vision, text, k=k, count=count, decode_tokens=decode_tokens)
        sweep.append(Row("vtw", k, f / 1e12, f / base))
    out = []
    for row in rows:
        if row == "vtw":
            out.append(sweep[0])
            continue
        f = _row_flops(dims, method, row, vision, text, ks[0], spec, count, decode_tokens)
        out.append(Row(row_key(row), row_layer(spec, row, ks[0]), f / 1e12, f / base))
    return out, sweep


def measured_rows(loaded, inputs: dict, ks: list[int], spec=None, protocol=None, *, method: str = "exact",
                  count: str = "all", rows: tuple[str, ...] = ROWS, progress=None,
                  **settings: Any) -> tuple[list[Row], list[Row], dict]:
    """Measure the ``rows`` (VTW at each K) on ``inputs``, side by side; FLOPs of each row by ``method``.

    ``spec`` (a ``RunSpec``; ``settings`` change its fields or the ``measure.Protocol``'s): FastV's
    settings, positions, and the seed Rand draws its tokens from; VTW† is measured at the K it draws for
    this input (and its FLOPs are the average over its K range)."""
    from .measure import Protocol
    from .spec import RunSpec

    names = set(Protocol.__dataclass_fields__)
    protocol = replace(protocol or Protocol(), **{k: settings.pop(k) for k in list(settings) if k in names})
    spec = RunSpec.of(spec, **settings)
    positions, seed = spec.positions, spec.seed or 0
    max_new_tokens, warmup = protocol.max_new_tokens, protocol.warmup
    from .engine.registry import uses_k
    from .flops import Dims, counted_flops, vision_text_counts
    from .measure import measure_many
    from .methods import random_k

    model = loaded.model
    vision, text = vision_text_counts(model, inputs["input_ids"])
    dims = Dims.from_config(model.config)
    decode = max(2, max_new_tokens) - 1
    drawn = random_k(seed, "profile", ks[0], loaded.num_layers)

    def tflops(row: str, k=None) -> float:
        if method == "counted":
            from .methods import context

            seeds = [seed] * int(inputs["input_ids"].shape[0])
            kk = drawn if row == "vtw-random" else k
            from .methods import prepare

            fed = prepare(model, row, inputs, spec.options(row))
            with context(model, row, kk, positions, seeds=seeds, settings=spec.options(row)):
                return counted_flops(model, fed, None, logits_to_keep=1, use_cache=False) / 1e12
        return _row_flops(dims, method, row, vision, text, k, spec, count, decode) / 1e12

    plan = []
    for row in rows:
        if row == "vtw":
            plan += [("vtw", k) for k in ks]
        else:
            plan.append((row, drawn if row == "vtw-random" else (ks[0] if uses_k(row) else None)))
    ms = measure_many(loaded, inputs, plan, replace(spec, seed=seed), protocol, progress=progress)
    measured: list[Row] = []
    for (row, k), m in zip(plan, ms):
        f = tflops(row, ks[0] if row == "vtw-random" else k)
        measured.append(Row(row_key(row), row_layer(spec, row, k), f,
                            prefill_s=m.prefill.median, decode_s_per_token=m.decode_s_per_token,
                            total_s=m.total.median, peak_memory_bytes=m.peak_memory_bytes,
                            kv_cache_bytes=m.kv_cache_bytes_end, kv_cache_bytes_prefill=m.kv_cache_bytes_prefill,
                            device_memory_used_bytes=m.device_memory_used_bytes,
                            spread={"prefill": asdict(m.prefill), "total": asdict(m.total),
                                    "decode_per_token": asdict(m.decode), "repeats": m.repeats, "warmup": warmup,
                                    "stable": m.stable}))
    base = _flops(dims, "exact" if method == "counted" else method, vision, text, count=count,
                  decode_tokens=decode) / 1e12
    if "stock" in rows:
        base = next(r.tflops for r in measured if r.method == "baseline")
    for r in measured:
        r.ratio = r.tflops / base if base else float("nan")
    sweep = [r for r in measured if r.method == "vtw"]
    out, seen_vtw = [], False
    for r in measured:
        if r.method == "vtw":
            if not seen_vtw:
                out.append(r)
                seen_vtw = True
            continue
        out.append(r)
    return out, sweep, {"vision": vision, "text": text}
