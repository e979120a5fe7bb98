"""``vtwctl attention``: beta per token type per layer and per output token (Figs. 4-5)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import (
    ATTN,
    CALIBRATION_DIR,
    DEVICE,
    DTYPE,
    JSON,
    MODEL,
    TRUST,
    Progress,
    check_device,
    emit_json,
    load_model,
    model_name,
    resolve_k,
    stderr_console,
)


@app.command()
def attention(
    model: str = MODEL,
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="Task(s), comma-separated: ai2d,mmmu,mme,pope."),
    samples: int = typer.Option(20, "--samples", "-n", min=1, help="Samples from each task."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1, help="Output tokens per sample."),
    k: str | None = typer.Option(None, "--k", help="Also withdraw vision tokens at layer K (VTW), or 'auto' "
                                                   "(the calibration record's K)."),
    split: str | None = typer.Option(None, "--split", help="Split (default: each task's test split)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Local data of a single task."),
    out: Path = typer.Option(Path("attention"), "--out", "-o", help="Output directory."),
    prompt_style: str = typer.Option("hf", "--prompt-style",
                                     help="hf (chat template) or paper (the authors' template: its ~35 system "
                                          "tokens are Figs. 4-5's system tokens)."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    profile_dir: Path | None = CALIBRATION_DIR,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """How much the output tokens attend to system, vision, instruction and output tokens."""
    from .. import preflight, tasks
    from ..attention import attention_stats
    from ..errors import VTWError
    from ..files import check_dir_target
    from ..spec import STOCK, K

    names = [d.strip() for d in dataset.split(",") if d.strip()]
    if not names:
        raise VTWError("--dataset names no task")
    units = [tasks.get(n) for n in names]
    if data_dir and len(units) > 1:
        raise VTWError("--data-dir holds the data of one task; run one task at a time")
    given = K.parse(k) if k is not None else STOCK
    auto_dataset = units[0].name if len(units) == 1 else None
    for t in units:  # splits, local files and sample counts, before the model loads
        preflight.check_data(t, split or t.test_split, data_dir, need=samples, what="--samples")
    check_dir_target(out, "output directory")
    name = model_name(model)
    if given.auto:
        from ..records import check_store

        check_store(name, profile_dir)
        if given.record(name, auto_dataset, profile_dir=profile_dir) is None:
            raise VTWError(f"--k auto: no calibration record for {name}; run vtwctl calibrate or pass --k")
    check_device(device)
    pairs = [(t.name, s) for t in units for s in t.load(split or t.test_split, samples, 0, data_dir)]
    loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code, prompt_style)
    console = stderr_console()
    k = None  # the layer (N: the stock model), None without --k
    if not given.stock:
        n = loaded.num_layers
        k = resolve_k(given, n, loaded.name, auto_dataset, profile_dir, console).layer(n)
    with Progress("attention", console) as bar:
        report = attention_stats(loaded, pairs, max_new_tokens, k, progress=lambda d, n: bar.update(d, n))
    try:
        paths = report.write(out)
    except OSError as exc:  # keep the result: print it, then say what could not be written
        paths, failed = [], f"cannot write into {out}: {exc.strerror or exc}"
    else:
        failed = None
    if json_out:
        emit_json({"model": report.model, "datasets": report.datasets, "k": k, "samples": len(pairs),
                   "prompt_style": prompt_style,
                   "max_new_tokens": max_new_tokens, "output_tokens": report.lengths, "by_layer": report.by_layer(),
                   "by_token": report.by_token(), "files": [str(p) for p in paths], "env": report.env})
    else:
        _render(console, report, loaded.num_layers, paths)
    if failed:
        raise VTWError(failed + " (the result is printed above)")


def _render(console, report, num_layers, paths) -> None:
    from rich.table import Table

    from ..attention import TYPES

    table = Table(title=f"attention of output tokens by type: {report.title()}")
    table.add_column("layer", justify="right")
    for t in TYPES:
        table.add_column(t, justify="right")
    rows = report.by_layer()
    for layer in range(num_layers):
        vals = {r["type"]: r["mean"] for r in rows if r["layer"] == layer}
        table.add_row(str(layer), *(f"{vals[t]:.3f}" for t in TYPES))
    console.print(table)
    if paths:
        console.print(f"[dim]wrote {', '.join(str(p) for p in paths)}[/dim]", soft_wrap=True)
