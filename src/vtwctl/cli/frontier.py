"""``vtwctl frontier``: accuracy against exact TFLOPs and measured prefill latency, every method over a grid of
its settings on one task; a table, JSON and the accuracy–TFLOPs plot (docs/frontier.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import (
    ATTN,
    DEVICE,
    DTYPE,
    JSON,
    MODEL,
    SET,
    TRUST,
    Progress,
    check_device,
    emit_json,
    load_model,
    method_settings,
    model_dims,
    model_name,
    stderr_console,
    stdout_console,
)


@app.command()
def frontier(
    model: str = MODEL,
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="The task (shapes, sqa, pope, mme, ...)."),
    methods: str = typer.Option("vtw,fastv,dart", "--methods",
                                help="Comma list of methods (engine.registry names, compositions such as "
                                     "visionzip+vtw); the stock model is always a point."),
    grid_: list[str] | None = typer.Option(None, "--grid",
                                           help="A method's values to sweep, METHOD.NAME=V1;V2 (repeatable): "
                                                "vtw.k=2;4;6, fastv.ratio=0.25;0.5;0.75, pdrop.layers=2,4,6;1,3,5. "
                                                "Default: each setting's own grid (docs/methods.md), VTW's K over "
                                                "eighths of the depth."),
    set_: list[str] | None = SET,
    output: Path = typer.Option(..., "--output", "-o",
                                help="Directory of the run: one JSONL per point (resumable), latency.json, and "
                                     "frontier.json."),
    split: str | None = typer.Option(None, "--split"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N samples only."),
    shard: str | None = typer.Option(None, "--shard", help="I/N: score shard I of N (the latency runs in shard 0)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Local directory or parquet file of the dataset."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1),
    metric: str = typer.Option("accuracy", "--metric", help="Which of the task's metrics is the accuracy axis."),
    budget: float | None = typer.Option(None, "--budget",
                                        help="TFLOPs budget: each method's point closest to it (matched FLOPs)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed prefill rounds per point (interleaved)."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Score only; no latency measurement."),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="Build the table, JSON and plot from --output as it stands (after "
                                          "sharded runs); loads no weights."),
    plot: Path | None = typer.Option(None, "--plot", help="The accuracy–TFLOPs plot as PNG."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """Accuracy vs exact TFLOPs vs prefill latency of each method over its settings (Fig. 8(a), generalised)."""
    from .. import frontier as lib
    from .. import preflight, tasks
    from ..errors import VTWError
    from ..evaluate import parse_shard
    from ..files import atomic_write, check_file_target, dumps
    from ..measure import Protocol
    from ..spec import RunSpec

    console = stderr_console()
    task = tasks.get(dataset)
    split = preflight.check_split(task, split)
    check_file_target(plot, "plot")
    if output.exists() and not output.is_dir():
        raise VTWError(f"--output {output} is a file; the frontier writes a directory")
    spec = RunSpec(model=model, method="stock", settings=method_settings(set_), batch_size=batch_size,
                   shard=parse_shard(shard), device=device, dtype=dtype, attn_implementation=attn_implementation,
                   trust_remote_code=trust_remote_code)
    name = model_name(model)
    dims, _ = model_dims(model)
    points = lib.grid([m for m in methods.split(",") if m.strip()], dims.num_layers, lib.parse_grid(grid_),
                      fixed=spec.settings)
    if not report_only:
        check_device(device)
        loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code, "hf")
        with Progress("frontier", console, unit="samples") as bar:
            lib.run(loaded, task, spec, points, output, split=split, limit=limit, source=data_dir,
                    protocol=None if no_latency else Protocol(max_new_tokens=2, warmup=1, repeats=repeats),
                    progress=lambda label, d, n: bar.update(d, n, label))
        name = loaded.name
    elif not output.is_dir():
        raise VTWError(f"--report-only: {output} is not a frontier directory")
    result = lib.report(output, points, task, dims, spec, name, metric=metric, budget=budget)
    data = result.to_dict()
    failed = []
    try:
        atomic_write(output / "frontier.json", dumps(data))
    except OSError as exc:
        failed.append(f"cannot write {output / 'frontier.json'}: {exc.strerror or exc}")
    if plot is not None and result.rows:
        try:
            lib.plot(result, plot)
        except OSError as exc:
            failed.append(f"cannot write plot {plot}: {exc.strerror or exc}")
    if json_out:
        emit_json(data)
    else:
        _render(result)
    for w in result.warnings:
        console.print(f"[yellow]{w}[/yellow]", highlight=False)
    if failed:
        raise VTWError("; ".join(failed) + " (the result is printed above)")


def _render(result) -> None:
    from rich.table import Table

    t = Table(title=f"{result.model} on {result.dataset}: {result.metric} vs exact prefill TFLOPs per sample")
    for col in ("method", "setting", "samples", result.metric, "TFLOPs", "FLOPs", "prefill", "speed-up", ""):
        t.add_column(col, justify="left" if col in ("method", "setting", "") else "right")
    matched = set(result.matched.values())
    for r in result.rows:
        setting = r.point.label[len(r.point.method):].strip() or "-"
        marks = " ".join(m for m, on in (("pareto", r.pareto), ("≈ budget", r.point.label in matched)) if on)
        t.add_row(r.point.method, setting, str(r.samples), f"{100 * r.accuracy:.1f} %", f"{r.tflops:.4g}",
                  f"{100 * r.ratio:.1f} %", "-" if r.prefill_s is None else f"{1000 * r.prefill_s:.1f} ms",
                  "-" if r.speedup is None else f"{r.speedup:.2f}×", marks)
    stdout_console().print(t)
