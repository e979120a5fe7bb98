"""The accuracy–FLOPs frontier: every method over a grid of its settings on one task (Fig. 8(a), generalised).

A *point* is one method at one setting (VTW at one K, FastV at one ratio, ...). ``grid`` lays the points out
(each method's declared ``Setting.grid`` by default, VTW over K), ``run`` scores each point on the task
through ``evaluate`` (lmms-eval's rules; one JSONL file per point under the output directory, so a run
resumes where it stopped and ``--shard I/N`` splits the samples), measures each point's prefill latency side
by side on one sample (``measure.measure_many``: interleaved repeats) and ``report`` gathers what the
directory holds into a ``Frontier``: accuracy, exact TFLOPs (per sample from its token counts, averaged), the
measured prefill latency, the Pareto points per method, and the setting of each method closest to a TFLOPs
budget ("at matched FLOPs").
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ArgumentError, VTWError

LATENCY_FILE = "latency.json"


@dataclass(frozen=True)
class Point:
    """One method at one setting: ``k`` the run's K (VTW, VTW†, Rand and their compositions), ``settings`` the
    method's own (``{method: {name: value}}``, as ``RunSpec.settings``)."""

    method: str
    k: int | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        bits = [] if self.k is None else [f"K={self.k}"]
        for values in self.settings.values():
            bits += [f"{n}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for n, v in values.items()]
        return self.method + (f" {' '.join(bits)}" if bits else "")

    @property
    def slug(self) -> str:
        """The point's file name stem (letters, digits, ``._-=`` only)."""
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.label.replace(" ", "__").replace("+", "-plus-"))

    def spec(self, base):
        """``base`` (a ``RunSpec``) running this point."""
        from .spec import STOCK, RunSpec

        settings = {m: dict(v) for m, v in base.settings.items()}
        for m, v in self.settings.items():
            settings[m] = {**settings.get(m, {}), **v}
        return RunSpec.of(base, method=self.method, k=STOCK if self.k is None else self.k, settings=settings)

    def to_dict(self) -> dict:
        return {"method": self.method, "k": self.k, "label": self.label,
                "settings": {m: {n: list(v) if isinstance(v, tuple) else v for n, v in s.items()}
                             for m, s in self.settings.items()}}


def default_ks(num_layers: int) -> list[int]:
    """VTW's default K grid: eighths of the depth (1..N-1), the paper's sweep in Fig. 8(a) thinned."""
    return sorted({min(num_layers - 1, max(1, round(num_layers * f / 8))) for f in range(1, 8)})


def parse_grid(items: Sequence[str] | None) -> dict[str, dict[str, list]]:
    """``--grid METHOD.NAME=V1;V2;...`` (``;`` between values; for a single-number setting ``,`` works too:
    ``fastv.ratio=0.25,0.5``; a list setting takes ``pdrop.layers=8,16,24;4,12,20``) as
    ``{method: {name: [values as text]}}``; ``vtw.k`` is VTW's K."""
    from .engine.registry import METHODS, canonical

    out: dict[str, dict[str, list]] = {}
    for item in items or ():
        key, sep, values = str(item).partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not values.strip():
            raise ArgumentError(f"--grid takes METHOD.NAME=V1;V2 (e.g. fastv.ratio=0.25;0.5), got {item!r}")
        method, name = canonical(method), name.strip()
        declared = {s.name: s for s in METHODS[method].settings()}
        if name == "k" and METHODS[method].uses_k:
            kind = "int"
        elif name in declared:
            kind = declared[name].kind
        else:
            raise ArgumentError(f"--grid {item}: {method} has no setting {name!r} "
                                f"(its settings: {', '.join(declared) or 'K only'})")
        sep_values = ";" if ";" in values or kind in ("ints", "pair") else ","
        out.setdefault(method, {})[name] = [v.strip() for v in values.split(sep_values) if v.strip()]
    return out


def grid(methods: Sequence[str], num_layers: int, given: Mapping[str, Mapping[str, list]] | None = None,
         ks: Sequence[int] | None = None, fixed: Mapping[str, Mapping[str, Any]] | None = None) -> list[Point]:
    """The points of ``methods`` (registry names, compositions allowed): the stock model once; a method that
    withdraws at K over ``given["vtw"]["k"]`` (else ``ks``, else ``default_ks``); each method's own settings over
    ``given[method][name]`` (else the value ``fixed`` pins, ``--set``; else the setting's declared ``grid``; the
    product over its settings). Each value is checked by the method's declaration; out-of-range layers are
    refused here, before any model runs."""
    from .engine.registry import canonical, members, parts

    given, fixed = given or {}, fixed or {}
    k_values = [int(k) for k in given.get("vtw", {}).get("k", [])] or list(ks or default_ks(num_layers))
    for k in k_values:
        if not 0 <= k <= num_layers:
            raise ArgumentError(f"vtw.k={k} is out of range: the model has {num_layers} decoder layers")
    points: list[Point] = []
    for name in dict.fromkeys(canonical(m) for m in methods):
        reducer, policy = parts(name)
        if name == "stock":
            points.append(Point("stock"))
            continue
        axes: list[list[tuple[str, str, Any]]] = []
        for entry in members(name):
            for s in entry.settings():
                pinned = [fixed[entry.name][s.name]] if s.name in fixed.get(entry.name, {}) else None
                values = given.get(entry.name, {}).get(s.name) or pinned or list(s.grid) or [s.default]
                axes.append([(entry.name, s.name, s.parse(v, f"{entry.name}.{s.name}")) for v in values])
        combos = list(itertools.product(*axes)) if axes else [()]
        for k in (k_values if policy.uses_k else [None]):
            for combo in combos:
                settings: dict[str, dict] = {}
                for method, setting, value in combo:
                    settings.setdefault(method, {})[setting] = value
                for entry in members(name):  # the whole setting checked (DART's pivots, layer ranges)
                    entry.resolve(settings.get(entry.name, {}))
                    if entry.target and not entry.uses_k and not entry.reducer:
                        entry.vision_by_layer(num_layers, 1, 1, settings.get(entry.name, {}))
                points.append(Point(name, k, settings))
    if not any(p.method == "stock" for p in points):
        points.insert(0, Point("stock"))  # the reference every ratio is taken against
    return points


def tflops(dims, point: Point, vision: float, text: float, spec) -> float:
    """Exact prefill TFLOPs (decoder layers + the lm_head of the last position) of ``point`` on a sample of
    ``vision`` + ``text`` tokens (``costs._row_flops``: a reducer's tokens, VTW's K, the field's layers)."""
    from .costs import _row_flops

    return _row_flops(dims, "exact", point.method, int(vision), int(text), point.k, point.spec(spec), "all", 0) / 1e12


# -- running ------------------------------------------------------------------------------------------------
def point_file(directory: Path, point: Point, shard: tuple[int, int]) -> Path:
    """Where ``point``'s records go: one JSONL per point (and shard)."""
    index, count = shard
    tail = "" if count == 1 else f".shard-{index}-of-{count}"
    return directory / f"{point.slug}{tail}.jsonl"


def run(loaded, task, spec, points: Sequence[Point], output: str | Path, *, split: str | None = None,
        limit: int | None = None, source: str | None = None, protocol=None, judge=None,
        progress: Callable[[str, int, int], None] | None = None) -> None:
    """Score every point on ``task`` (``evaluate``; records in ``output``/POINT.jsonl, resumed where they stop),
    then, in shard 0, measure each point's prefill latency side by side on the task's first sample
    (``protocol``: a ``measure.Protocol``; None: no latency), written to ``output``/latency.json."""
    from .evaluate import evaluate, select

    directory = Path(output)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VTWError(f"cannot create the frontier directory {directory}: {exc.strerror or exc}") from None
    split = split or task.test_split
    samples = select(task, split, source, limit, spec.shard)
    for point in points:
        evaluate(loaded, task, point.spec(spec), split=split, samples=samples, judge=judge,
                 output=point_file(directory, point, spec.shard),
                 progress=functools.partial(progress, point.label) if progress else None)
    if protocol is not None and spec.shard[0] == 0:  # shard 0's first sample is the task's first
        measure_latency(loaded, spec, points, directory, next(iter(samples.first(1).decoded())), protocol)


def measure_latency(loaded, spec, points: Sequence[Point], directory: Path, sample, protocol) -> dict:
    """Prefill latency of every point on ``sample`` (a decoded task sample), measured side by side (one
    interleaved ``measure_many``: load changes hit every point alike); written to ``directory``/latency.json."""
    from .env import environment
    from .files import atomic_write
    from .measure import measure_many
    from .tasks import BadSample

    if isinstance(sample, BadSample):
        raise sample
    inputs = loaded.build_inputs([sample.prompt], images=[list(sample.images or [])], videos=[sample.video])
    plans = [(p.method, p.k, {m: dict(v) for m, v in p.settings.items()}) for p in points]
    ms = measure_many(loaded, inputs, plans, spec, replace(protocol, max_new_tokens=max(2, protocol.max_new_tokens)))
    data = {"sample": sample.id, "protocol": asdict(protocol), "env": environment(loaded),
            "points": {p.label: {"prefill_s": m.prefill.median, "prefill": asdict(m.prefill), "stable": m.stable,
                                 "repeats": m.repeats} for p, m in zip(points, ms)}}
    atomic_write(directory / LATENCY_FILE, json.dumps(data, indent=1, default=str))
    return data


# -- the report ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One point of the frontier as the report shows it."""

    point: Point
    samples: int
    accuracy: float | None
    tflops: float
    ratio: float = 1.0
    prefill_s: float | None = None
    speedup: float | None = None
    pareto: bool = False
    missing_shards: list = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {**self.point.to_dict(), "samples": self.samples, "accuracy": self.accuracy, "tflops": self.tflops,
               "flops_ratio": self.ratio, "prefill_s": self.prefill_s, "prefill_speedup": self.speedup,
               "pareto": self.pareto}
        if self.missing_shards:
            out["missing_shards"] = self.missing_shards
        return out


@dataclass
class Frontier:
    model: str
    dataset: str
    metric: str
    rows: list[Row]
    budget: float | None = None
    matched: dict = field(default_factory=dict)  # method -> the label of its point closest to the budget
    latency: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    schema: int = 1

    def to_dict(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "metric": self.metric, "budget_tflops": self.budget,
                "matched": self.matched, "rows": [r.to_dict() for r in self.rows],
                "latency_sample": self.latency.get("sample"), "env": self.latency.get("env", {}),
                "warnings": self.warnings, "schema": self.schema}


def report(directory: str | Path, points: Sequence[Point], task, dims, spec, model: str, *,
           metric: str = "accuracy", budget: float | None = None) -> Frontier:
    """The frontier of what ``directory`` holds for ``points``: each point's records (its shards together),
    scored by the task's own aggregation; TFLOPs per sample from its token counts; latency from latency.json."""
    from .evaluate import _missing_shards, dedupe
    from .results import scan

    directory = Path(directory)
    latency = {}
    lat_path = directory / LATENCY_FILE
    if lat_path.is_file():
        try:
            latency = json.loads(lat_path.read_text())
        except (OSError, ValueError) as exc:
            raise VTWError(f"{lat_path}: not a latency record ({exc}); delete it to measure again") from None
    rows, warnings = [], []
    for point in points:
        files = sorted(directory.glob(f"{_glob(point.slug)}.jsonl")) + \
            sorted(directory.glob(f"{_glob(point.slug)}.shard-*-of-*.jsonl"))
        records: list[dict] = []
        for f in files:
            records += scan(f).records
        records = [r for r in dedupe(records) if not r.get("skipped")]
        missing = _missing_shards(records)
        if missing:
            warnings.append(f"{point.label}: shards {', '.join(missing)} have no records yet")
        if not records:
            warnings.append(f"{point.label}: no records in {directory}")
            continue
        metrics = task.metrics(records)
        if metric not in metrics:
            raise VTWError(f"--metric {metric!r}: {task.name} reports {', '.join(sorted(metrics))}")
        flops = sum(tflops(dims, point, r["num_vision_tokens"], r["num_text_tokens"], spec) for r in records)
        lat = latency.get("points", {}).get(point.label, {})
        rows.append(Row(point, len(records), float(metrics[metric]), flops / len(records),
                        prefill_s=lat.get("prefill_s"), missing_shards=missing))
    base = next((r for r in rows if r.point.method == "stock"), None)
    for r in rows:
        if base is not None and base.tflops:
            r.ratio = r.tflops / base.tflops
        if base is not None and base.prefill_s and r.prefill_s:
            r.speedup = base.prefill_s / r.prefill_s
    _mark_pareto(rows)
    matched = {}
    if budget is not None:
        for method in dict.fromkeys(r.point.method for r in rows if r.point.method != "stock"):
            mine = [r for r in rows if r.point.method == method]
            matched[method] = min(mine, key=lambda r: (abs(r.tflops - budget), r.tflops)).point.label
    return Frontier(model, task.name, metric, rows, budget, matched, latency, warnings)


def _glob(stem: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", stem)


def _mark_pareto(rows: list[Row]) -> None:
    """Per method, the points no other point of the same method beats (higher accuracy at fewer TFLOPs)."""
    for method in {r.point.method for r in rows}:
        mine = [r for r in rows if r.point.method == method and r.accuracy is not None]
        for r in mine:
            r.pareto = not any(o is not r and o.tflops <= r.tflops and o.accuracy >= r.accuracy
                               and (o.tflops < r.tflops or o.accuracy > r.accuracy) for o in mine)


def plot(frontier: Frontier, path: str | Path) -> None:
    """Accuracy against TFLOPs (Fig. 8(a)): per method a line through its Pareto points and hollow markers for
    its other points; the stock model a star; the budget a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        for i, method in enumerate(dict.fromkeys(r.point.method for r in frontier.rows)):
            mine = sorted((r for r in frontier.rows if r.point.method == method), key=lambda r: r.tflops)
            if method == "stock":
                ax.scatter([r.tflops for r in mine], [100 * r.accuracy for r in mine], marker="*", s=160,
                           color="black", label="stock", zorder=3)
                continue
            color = f"C{i % 10}"
            front = [r for r in mine if r.pareto]  # the method's frontier: a line; its other points: markers
            ax.plot([r.tflops for r in front], [100 * r.accuracy for r in front], marker="o", color=color,
                    label=method)
            rest = [r for r in mine if not r.pareto]
            if rest:
                ax.scatter([r.tflops for r in rest], [100 * r.accuracy for r in rest], marker="o", s=18,
                           facecolors="none", edgecolors=color, alpha=0.8)
        if frontier.budget is not None:
            ax.axvline(frontier.budget, linestyle="--", color="grey", label=f"budget {frontier.budget:.3g} TFLOPs")
        ax.set_xlabel("prefill TFLOPs per sample (exact)")
        ax.set_ylabel(f"{frontier.metric} (%)")
        ax.set_title(f"{frontier.model} on {frontier.dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
