"""``vtwctl profile``: TFLOPs, latency and memory of baseline vs VTW vs FastV."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import (
    ATTN,
    CALIBRATION_DIR,
    DART_K,
    DART_PIVOTS,
    DART_RATIO,
    DEVICE,
    DTYPE,
    JSON,
    MODEL,
    SET,
    TRUST,
    check_device,
    emit_json,
    fastv_preset_into,
    load_model,
    method_settings,
    model_dims,
    model_name,
    parse_pivots,
    stderr_console,
)


def _layers(given, n: int, model: str, profile_dir, dataset: str | None, console) -> list[int]:
    """The K rows to profile: ``given`` (``spec.K`` values; no --k: auto, else half the layers) as layers 0..N."""
    from ..errors import VTWError
    from ..spec import AUTO
    from .common import resolve_k

    if given is None or given == (AUTO,):
        found = resolve_k(AUTO, n, model, dataset, profile_dir, console)
        if found is None:
            if given is not None:
                raise VTWError(f"no calibration record for {model}; run vtwctl calibrate or pass --k")
            console.print(f"no --k and no calibration record for {model}: profiling VTW at K={n // 2} (half the "
                          "layers)", highlight=False)
            return [n // 2]
        return [found.layer(n)]
    return [k.resolve(n).layer(n) for k in given]


@app.command()
def profile(
    model: str = MODEL,
    flops_only: bool = typer.Option(False, "--flops-only", help="FLOPs from dimensions only (no weights)."),
    method: str = typer.Option("stock,vtw,fastv", "--method",
                               help="Rows, a comma list of stock, vtw, vtw-random (VTW at a random K, Table 2's "
                                    "VTW†), rand (random tokens dropped), fastv, dart, pdrop, visionzip, "
                                    "visionzip+vtw ... (docs/methods.md; settings: --set). (The old counting values "
                                    "paper/exact/counted still work here, deprecated: use --flops.)"),
    flops: str | None = typer.Option(None, "--flops",
                                     help="How FLOPs are counted: paper (Eq. 1), exact (analytic, default), counted "
                                          "(operator counters) or calflops (the authors' calflops rules)."),
    count: str = typer.Option("all", "--count", help="all, or vision: only the vision tokens' share (Table 3)."),
    k: str | None = typer.Option(None, "--k", help="K, a list to sweep (8,12,16,20,24) or auto (calibration)."),
    fastv_k: int | None = typer.Option(None, "--fastv-k", help="FastV layer K (default: the preset's)."),
    fastv_ratio: float | None = typer.Option(None, "--fastv-ratio",
                                             help="FastV: the fraction of vision tokens DROPPED (the authors' "
                                                  "fastv_kvcache.py gives the fraction kept); default 0.5."),
    fastv_preset: str = typer.Option("paper", "--fastv-preset",
                                     help="paper (K=2, as the paper's text) or authors (K=3, their FastV file)."),
    dart_k: int | None = DART_K,
    dart_ratio: float | None = DART_RATIO,
    dart_pivots: str | None = DART_PIVOTS,
    set_: list[str] | None = SET,
    seed: int = typer.Option(0, "--seed", help="Seed of the rand and vtw-random rows."),
    prompt_style: str = typer.Option("hf", "--prompt-style", help="hf (chat template) or paper (the authors')."),
    vision_tokens: int | None = typer.Option(None, "--vision-tokens", min=0, help="Workload (--flops-only)."),
    text_tokens: int | None = typer.Option(None, "--text-tokens", min=1, help="Workload (--flops-only)."),
    image: Path | None = typer.Option(None, "--image", help="Real input: image (with --prompt)."),
    prompt: str | None = typer.Option(None, "--prompt"),
    dataset: str | None = typer.Option(None, "--dataset", help="Real input: a task sample (default: shapes)."),
    index: int = typer.Option(0, "--index", min=0, help="Which sample of --dataset (0-based)."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=2),
    repeats: int = typer.Option(5, "--repeats", min=1,
                                help="Timed rounds per row, at least; more follow (up to --max-repeats) while the "
                                     "spread (p90 - p10) / median of prefill or decode is above 10 %. The output "
                                     "says how many ran."),
    max_repeats: int | None = typer.Option(None, "--max-repeats", min=1,
                                           help="Most timed rounds per row (default 3 x --repeats; = --repeats: "
                                                "exactly that many)."),
    warmup: int = typer.Option(1, "--warmup", min=0),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the rows as CSV."),
    plot: Path | None = typer.Option(None, "--plot", help="Bar chart (or curves vs K for a K list) as PNG."),
    profile_dir: Path | None = CALIBRATION_DIR,
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """TFLOPs (Eq. 1, exact, counted), prefill/decode latency, peak memory and KV bytes: baseline, VTW, FastV."""
    from ..costs import FLOP_METHODS, ROWS, ProfileReport, flops_rows, measured_rows, row_settings
    from ..env import environment
    from ..errors import VTWError
    from ..files import check_file_target
    from ..measure import Protocol
    from ..methods import canonical
    from ..profiles import find
    from ..records import check_store, records
    from ..spec import RunSpec

    console = stderr_console()
    if method in FLOP_METHODS:  # the old meaning of --method
        if flops is not None and flops != method:
            raise VTWError(f"--method {method} (the old spelling of --flops) contradicts --flops {flops}")
        console.print(f"note: --method {method} is deprecated for the counting; use --flops {method} "
                      "(--method now names the rows)", highlight=False)
        flops, rows = method, ROWS
    else:
        rows = tuple(canonical(m) for m in method.split(",") if m.strip())
        if not rows or len(set(rows)) != len(rows):
            raise VTWError(f"--method takes a comma list of different rows, got {method!r}")
    flops = flops or "exact"
    if flops not in FLOP_METHODS:
        raise VTWError(f"--flops must be one of {', '.join(FLOP_METHODS)}, got {flops!r}")
    settings = method_settings(set_, fastv_k=fastv_k, fastv_ratio=fastv_ratio, dart_k=dart_k, dart_ratio=dart_ratio,
                               dart_pivots=None if dart_pivots is None else parse_pivots(dart_pivots))
    fastv_preset_into(settings, fastv_preset)
    spec = RunSpec(model=model, method="stock", settings=settings, seed=seed, prompt_style=prompt_style,
                   device=device, dtype=dtype, attn_implementation=attn_implementation,
                   trust_remote_code=trust_remote_code)  # the rows' shared settings, checked here
    if count not in ("all", "vision"):
        raise VTWError(f"--count must be all or vision, got {count!r}")
    from ..spec import K

    given = K.parse_list(k) if k is not None else None
    check_file_target(csv, "CSV file")
    check_file_target(plot, "plot")
    name = model_name(model)
    if given is None or given[0].auto:
        check_store(name, profile_dir)
    if flops_only:
        if image is not None or prompt is not None:
            raise VTWError("--flops-only counts a workload of --vision-tokens and --text-tokens; drop --image/--prompt")
        dims, res = model_dims(model)
        prof = res.profile or find(model) or {}
        vis = vision_tokens if vision_tokens is not None else (prof.get("vision", {}).get("tokens_per_image"))
        txt = text_tokens if text_tokens is not None else prof.get("typical_text_tokens")
        if vis is None or txt is None:
            raise VTWError("give --vision-tokens and --text-tokens for this model")
        if count == "vision" and int(vis) == 0:
            raise VTWError("--count vision measures the vision tokens' share: give --vision-tokens > 0")
        name = prof.get("name", model)
        ks = _layers(given, dims.num_layers, name, profile_dir, dataset, console)
        _check_own_layers(spec, rows, dims.num_layers)
        table, sweep = flops_rows(dims, int(vis), int(txt), ks, spec, flops, count, rows=rows)
        report = ProfileReport(model=name, k=ks[0], tokens={"vision": int(vis), "text": int(txt)}, method=flops,
                               count=count, rows=table, sweep=sweep if len(ks) > 1 and "vtw" in rows else [],
                               fastv=_fastv(spec, fastv_preset), dart=_dart(spec, rows),
                               settings=row_settings(spec, rows), calibrations=records(name, profile_dir),
                               env=environment())
    else:
        source = _source(image, prompt, dataset, index)
        check_device(device)
        loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code, prompt_style)
        auto_dataset = None if prompt is not None else (dataset or "shapes")
        ks = _layers(given, loaded.num_layers, loaded.name, profile_dir, auto_dataset, console)
        _check_own_layers(spec, rows, loaded.num_layers)
        inputs = _inputs(loaded, source)
        from .common import Progress

        with Progress("measuring", console, unit="runs") as bar:
            table, sweep, tokens = measured_rows(loaded, inputs, ks, spec, Protocol(max_new_tokens, warmup, repeats,
                                                                                     max_repeats),
                                                 method=flops, count=count, rows=rows,
                                                 progress=lambda d, n: bar.update(d, n))
        report = ProfileReport(model=loaded.name, k=ks[0], tokens=tokens, method=flops, count=count, rows=table,
                               sweep=sweep if len(ks) > 1 else [],
                               fastv=_fastv(spec, fastv_preset), dart=_dart(spec, rows),
                               settings=row_settings(spec, rows), calibrations=records(loaded.name, profile_dir),
                               env=environment(loaded),
                               source=source[2])
    data = report.to_dict()
    failed = []  # a file that cannot be written after the measurement must not lose the result
    if csv is not None:
        try:
            _write_csv(report, csv)
        except OSError as exc:
            failed.append(f"cannot write CSV file {csv}: {exc.strerror or exc}")
    if plot is not None:
        from ..plots import plot_profile

        try:
            plot_profile(data, plot)
        except OSError as exc:
            failed.append(f"cannot write plot {plot}: {exc.strerror or exc}")
    if json_out:
        emit_json(data)
    else:
        _render(console, report, (repeats, max(repeats, max_repeats if max_repeats is not None else 3 * repeats)))
    if failed:
        raise VTWError("; ".join(failed) + " (the result is printed above)")


def _check_own_layers(spec, rows, num_layers: int) -> None:
    """The layers of the rows' methods within the model (FastV's and DART's k, PyramidDrop's layers)."""
    from ..engine.registry import parts

    for row in rows:
        policy = parts(row)[1]
        if policy.target and not policy.uses_k:
            policy.vision_by_layer(num_layers, 1, 1, spec.settings.get(policy.name))  # checks its layers


def _fastv(spec, preset: str) -> dict:
    return {"k": spec.fastv_k, "ratio": spec.fastv_ratio, "preset": preset}


def _dart(spec, rows) -> dict:
    """DART's settings for the report (empty without a dart row)."""
    return {"k": spec.dart_k, "ratio": spec.dart_ratio, "pivots": list(spec.dart_pivots)} if "dart" in rows else {}


def _source(image, prompt, dataset, index):
    """What to measure on, read and checked before the model loads: (image, prompt, description)."""
    from .. import preflight, tasks
    from ..errors import VTWError
    from ..media import read_image

    if image is not None or prompt is not None:
        if dataset is not None:
            raise VTWError("--dataset brings its own inputs: drop --image/--prompt")
        if prompt is None:
            raise VTWError("--image needs --prompt")
        if not prompt.strip():
            raise VTWError("--prompt is empty")
        return (read_image(image) if image is not None else None), prompt, "your prompt"
    task = tasks.get(dataset or "shapes")
    preflight.check_data(task, task.test_split, None, index=index, what="--index")
    samples = task.load(task.test_split, index + 1, 0, None)
    if len(samples) <= index:
        raise VTWError(f"--index {index} is past the end of {task.name}/{task.test_split} ({len(samples)} samples)")
    return samples[index], None, f"{task.name}/{task.test_split} sample {index}"


def _inputs(loaded, source):
    sample, prompt, _ = source
    if prompt is not None:
        return loaded.build_inputs(prompt, images=[sample] if sample is not None else None)
    return loaded.sample_inputs(sample)


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _fmt_s(x):
    return "-" if x is None else f"{x * 1000:.1f} ms"


def _render(console, report, limits: tuple[int, int]) -> None:
    """The table, then how the timings were taken (``limits``: --repeats and --max-repeats)."""
    from rich.table import Table

    t = Table(title=f"{report.model}: {report.tokens['vision']} vision + {report.tokens['text']} text tokens"
                    + (f" ({report.source})" if report.source else "") + f", FLOPs by {report.method}"
                    + (" (vision share)" if report.count == "vision" else ""))
    from ..plots import flops_unit

    unit, factor = flops_unit(report.rows[0].tflops)
    for col in ("row", "K", unit, "ratio", "prefill", "decode/token", "end-to-end", "peak memory", "KV bytes"):
        t.add_column(col, justify="right" if col != "row" else "left")
    for r in _table_rows(report):
        label = {"fastv": f"fastv (drops {report.fastv.get('ratio', 0):.0%})",
                 "dart": f"dart (drops {report.dart.get('ratio', 0):.0%} + pivots)"}.get(r.method)
        if label is None and report.settings.get(r.method):
            label = f"{r.method} (" + ", ".join(f"{name} {','.join(map(str, v)) if isinstance(v, list) else v}"
                                                for name, v in report.settings[r.method].items()) + ")"
        t.add_row(label or r.method, "-" if r.k is None else str(r.k), f"{r.tflops * factor:.4g}",
                  f"{r.ratio * 100:.2f} %",
                  _fmt_s(r.prefill_s), _fmt_s(r.decode_s_per_token), _fmt_s(r.total_s),
                  _fmt_bytes(r.peak_memory_bytes), _fmt_bytes(r.kv_cache_bytes))
    console.print(t)
    timed = [r.spread for r in _table_rows(report) if r.spread]
    if timed:
        ran, (least, most) = max(sp.get("repeats", 0) for sp in timed), limits
        why = (f": --repeats {least}, then more (up to --max-repeats {most}) while the spread of prefill or decode "
               "was above 10 %" if ran > least else "")
        console.print(f"[dim]timings: medians of {ran} repeats per row after {timed[0].get('warmup')} warm-up "
                      f"round(s){why}[/dim]", soft_wrap=True)
    shaky = [r for r in _table_rows(report) if r.spread and r.spread.get("stable") is False]
    if shaky:
        n = shaky[0].spread.get("repeats")
        console.print(f"[yellow]timings unsteady: after {n} repeats the spread (p90 - p10) / median of prefill or "
                      "decode is still above 10 % (a busy machine?); the medians are shown, the spread is in "
                      "--json[/yellow]")
    if report.calibrations:
        recs = ", ".join(f"{c.get('dataset')}: K={c.get('k')} (η={c.get('eta')}, "
                         f"{'shipped' if str(c.get('origin', '')).startswith('shipped') else 'yours'})"
                         for c in report.calibrations[-6:])
        console.print(f"[dim]calibration records: {recs}[/dim]")


def _table_rows(report) -> list:
    """The rows in order, the VTW row replaced by its K sweep when there is one."""
    out = []
    for r in report.rows:
        out.extend(report.sweep if r.method == "vtw" and report.sweep else [r])
    return out


def _write_csv(report, path: Path) -> None:
    import csv as _csv

    rows = [r.to_dict() for r in _table_rows(report)]
    keys = ["method", "k", "tflops", "ratio", "prefill_s", "decode_s_per_token", "total_s", "peak_memory_bytes",
            "kv_cache_bytes", "kv_cache_bytes_prefill"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = _csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
