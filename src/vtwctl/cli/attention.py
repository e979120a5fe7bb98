"""``vtwctl attention``: beta per token type per layer and per output token (Figs. 4-5)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import ATTN, DEVICE, DTYPE, JSON, MODEL, TRUST, emit_json, load_model, stderr_console


@app.command()
def attention(
    model: str = MODEL,
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="Task(s), comma-separated: ai2d,mmmu,mme,pope."),
    samples: int = typer.Option(20, "--samples", "-n", min=1, help="Samples from each task."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1, help="Output tokens per sample."),
    k: int | None = typer.Option(None, "--k", help="Also withdraw vision tokens at layer K (VTW)."),
    split: str | None = typer.Option(None, "--split", help="Split (default: each task's test split)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Local data of a single task."),
    out: Path = typer.Option(Path("attention"), "--out", "-o", help="Output directory."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """How much the output tokens attend to system, vision, instruction and output tokens."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .. import tasks
    from ..attention import TYPES, attention_stats
    from ..errors import VTWError, check_k

    names = [d.strip() for d in dataset.split(",") if d.strip()]
    units = [tasks.get(n) for n in names]
    if data_dir and len(units) > 1:
        raise VTWError("--data-dir holds the data of one task; run one task at a time")
    loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code)
    check_k(k, loaded.num_layers)
    pairs = [(t.name, s) for t in units for s in t.load(split or t.test_split, samples, 0, data_dir)]
    console = stderr_console()
    with Progress(TextColumn("attention"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task("attention", total=len(pairs))
        report = attention_stats(loaded, pairs, max_new_tokens, k,
                                 progress=lambda d, n: bar.update(job, completed=d))
    paths = report.write(out)
    if json_out:
        emit_json({"model": report.model, "datasets": report.datasets, "k": k, "samples": len(pairs),
                   "max_new_tokens": max_new_tokens, "by_layer": report.by_layer(), "by_token": report.by_token(),
                   "files": [str(p) for p in paths], "env": report.env})
        return
    from rich.table import Table

    table = Table(title=f"attention of output tokens by type ({report.model}, {len(pairs)} samples)")
    table.add_column("layer", justify="right")
    for t in TYPES:
        table.add_column(t, justify="right")
    rows = report.by_layer()
    for layer in range(loaded.num_layers):
        vals = {r["type"]: r["mean"] for r in rows if r["layer"] == layer}
        table.add_row(str(layer), *(f"{vals[t]:.3f}" for t in TYPES))
    console.print(table)
    console.print(f"[dim]wrote {', '.join(str(p) for p in paths)}[/dim]")
