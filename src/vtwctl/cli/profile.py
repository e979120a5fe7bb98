"""``vtwctl profile``: TFLOPs, latency and memory of baseline vs VTW vs FastV."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import ATTN, DEVICE, DTYPE, JSON, MODEL, TRUST, emit_json, load_model, stderr_console


def _parse_ks(text: str | None, n: int, model: str, profile_dir) -> list[int]:
    from ..errors import VTWError, check_k
    from ..profiles import records

    if text is None or text == "auto":
        recs = [r for r in records(model, profile_dir) if r.get("k") is not None]
        if not recs:
            if text == "auto":
                raise VTWError(f"no calibration record for {model}; run vtwctl calibrate or pass --k")
            return [n // 2]
        return [int(recs[-1]["k"])]
    try:
        ks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise VTWError(f"--k must be an integer, a comma-separated list or 'auto', got {text!r}") from None
    if not ks:
        raise VTWError(f"--k must be an integer, a comma-separated list or 'auto', got {text!r}")
    for k in ks:
        check_k(k, n)
    return ks


@app.command()
def profile(
    model: str = MODEL,
    flops_only: bool = typer.Option(False, "--flops-only", help="FLOPs from dimensions only (no weights)."),
    method: str = typer.Option("exact", "--method", help="paper (Eq. 1), exact (analytic) or counted (operators)."),
    count: str = typer.Option("all", "--count", help="all, or vision: only the vision tokens' share (Table 3)."),
    k: str | None = typer.Option(None, "--k", help="K, a list to sweep (8,12,16,20,24) or auto (calibration)."),
    fastv_k: int = typer.Option(2, "--fastv-k", help="FastV layer."),
    fastv_ratio: float = typer.Option(0.5, "--fastv-ratio", help="FastV: fraction of vision tokens dropped."),
    vision_tokens: int | None = typer.Option(None, "--vision-tokens", help="Workload (--flops-only)."),
    text_tokens: int | None = typer.Option(None, "--text-tokens", help="Workload (--flops-only)."),
    image: Path | None = typer.Option(None, "--image", help="Real input: image (with --prompt)."),
    prompt: str | None = typer.Option(None, "--prompt"),
    dataset: str | None = typer.Option(None, "--dataset", help="Real input: a task sample (default: shapes)."),
    index: int = typer.Option(0, "--index", help="Which sample of --dataset."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=2),
    repeats: int = typer.Option(5, "--repeats", min=1),
    warmup: int = typer.Option(1, "--warmup", min=0),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the rows as CSV."),
    plot: Path | None = typer.Option(None, "--plot", help="Bar chart (or curves vs K for a K list) as PNG."),
    profile_dir: Path | None = typer.Option(None, "--profile-dir", help="Where calibration records live."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """TFLOPs (Eq. 1, exact, counted), prefill/decode latency, peak memory and KV bytes: baseline, VTW, FastV."""
    from ..env import environment
    from ..errors import VTWError
    from ..profiles import find, records
    from ..profiling import FLOP_METHODS, ProfileReport, flops_rows, measured_rows

    if method not in FLOP_METHODS:
        raise VTWError(f"--method must be one of {', '.join(FLOP_METHODS)}, got {method!r}")
    if count not in ("all", "vision"):
        raise VTWError(f"--count must be all or vision, got {count!r}")
    if not 0.0 <= fastv_ratio <= 1.0:
        raise VTWError(f"--fastv-ratio must be in [0, 1], got {fastv_ratio}")
    console = stderr_console()
    if flops_only:
        from ..flops import dims_for
        from ..loading import resolve

        res = resolve(model)
        try:
            dims = dims_for(res.profile["name"] if res.profile else res.source)
        except OSError:
            raise VTWError(f"no dimensions for {model}: not a known short name and no local config") from None
        prof = res.profile or find(model) or {}
        vis = vision_tokens if vision_tokens is not None else (prof.get("vision", {}).get("tokens_per_image"))
        txt = text_tokens if text_tokens is not None else prof.get("typical_text_tokens")
        if vis is None or txt is None:
            raise VTWError("give --vision-tokens and --text-tokens for this model")
        name = prof.get("name", model)
        ks = _parse_ks(k, dims.num_layers, name, profile_dir)
        if not 1 <= fastv_k <= dims.num_layers:
            raise VTWError(f"--fastv-k must be in 1..{dims.num_layers}")
        rows, sweep = flops_rows(dims, int(vis), int(txt), ks, fastv_k, fastv_ratio, method, count)
        report = ProfileReport(model=name, k=ks[0], tokens={"vision": int(vis), "text": int(txt)}, method=method,
                               count=count, rows=rows, sweep=sweep if len(ks) > 1 else [],
                               fastv={"k": fastv_k, "ratio": fastv_ratio},
                               calibrations=records(name, profile_dir), env=environment())
    else:
        loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code)
        ks = _parse_ks(k, loaded.num_layers, loaded.name, profile_dir)
        if not 1 <= fastv_k <= loaded.num_layers:
            raise VTWError(f"--fastv-k must be in 1..{loaded.num_layers}")
        inputs = _inputs(loaded, image, prompt, dataset, index)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("measuring"), BarColumn(), MofNCompleteColumn(), console=console,
                      transient=True) as bar:
            job = bar.add_task("m", total=(len(ks) + 2) * (repeats + 1))
            rows, sweep, tokens = measured_rows(loaded, inputs, ks, fastv_k, fastv_ratio, method, count,
                                                max_new_tokens, warmup, repeats,
                                                progress=lambda d, n: bar.update(job, completed=d, total=n))
        report = ProfileReport(model=loaded.name, k=ks[0], tokens=tokens, method=method, count=count, rows=rows,
                               sweep=sweep if len(ks) > 1 else [], fastv={"k": fastv_k, "ratio": fastv_ratio},
                               calibrations=records(loaded.name, profile_dir), env=environment(loaded))
    data = report.to_dict()
    if csv is not None:
        _write_csv(report, csv)
    if plot is not None:
        from ..plots import plot_profile

        plot_profile(data, plot)
    if json_out:
        emit_json(data)
        return
    _render(console, report)


def _inputs(loaded, image, prompt, dataset, index):
    from ..errors import VTWError
    from ..media import read_image

    if image is not None or prompt is not None:
        if prompt is None:
            raise VTWError("--image needs --prompt")
        return loaded.build_inputs(prompt, images=[read_image(image)] if image is not None else None)
    from .. import tasks

    task = tasks.get(dataset or "shapes")
    samples = task.load(task.test_split, index + 1, 0, None)
    if len(samples) <= index:
        raise VTWError(f"--index {index} is beyond the {len(samples)} samples of {task.name}")
    s = samples[index]
    return loaded.sample_inputs(s)


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _fmt_s(x):
    return "-" if x is None else f"{x * 1000:.1f} ms"


def _render(console, report) -> None:
    from rich.table import Table

    t = Table(title=f"{report.model}: {report.tokens['vision']} vision + {report.tokens['text']} text tokens, "
                    f"FLOPs by {report.method}" + (" (vision share)" if report.count == "vision" else ""))
    for col in ("row", "K", "TFLOPs", "ratio", "prefill", "decode/token", "end-to-end", "peak memory", "KV bytes"):
        t.add_column(col, justify="right" if col != "row" else "left")
    for r in [*report.rows[:1], *(report.sweep or report.rows[1:2]), report.rows[-1]]:
        t.add_row(r.method, "-" if r.k is None else str(r.k), f"{r.tflops:.4g}", f"{r.ratio * 100:.2f} %",
                  _fmt_s(r.prefill_s), _fmt_s(r.decode_s_per_token), _fmt_s(r.total_s),
                  _fmt_bytes(r.peak_memory_bytes), _fmt_bytes(r.kv_cache_bytes))
    console.print(t)
    if report.calibrations:
        recs = ", ".join(f"{c.get('dataset')}: K={c.get('k')} (η={c.get('eta')})" for c in report.calibrations[-6:])
        console.print(f"[dim]calibration records: {recs}[/dim]")


def _write_csv(report, path: Path) -> None:
    import csv as _csv

    rows = [r.to_dict() for r in [*report.rows[:1], *(report.sweep or report.rows[1:2]), report.rows[-1]]]
    keys = ["method", "k", "tflops", "ratio", "prefill_s", "decode_s_per_token", "total_s", "peak_memory_bytes",
            "kv_cache_bytes", "kv_cache_bytes_prefill"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = _csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
