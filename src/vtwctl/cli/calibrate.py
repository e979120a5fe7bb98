"""``vtwctl calibrate``: the KL sweep over K (Eq. 6), saved as a calibration record."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import ATTN, DEVICE, DTYPE, JSON, MODEL, TRUST, emit_json, load_model, stderr_console


def parse_etas(text: str) -> list[float]:
    from ..errors import VTWError

    try:
        etas = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise VTWError(f"--eta must be a number or a comma-separated list of numbers, got {text!r}") from None
    if not etas or any(e <= 0 for e in etas):
        raise VTWError(f"--eta must be > 0, got {text!r}")
    return etas


@app.command()
def calibrate(
    model: str = MODEL,
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="Task to calibrate on (its calibration split)."),
    eta: str | None = typer.Option(None, "--eta", help="Threshold(s), e.g. 0.003 or 0.006,0.005,0.004 "
                                   "(default: the model profile's, else 0.003)."),
    k_min: int | None = typer.Option(None, "--k-min", help="First candidate K (default 5, as the paper)."),
    samples: int = typer.Option(20, "--samples", "-n", help="Calibration samples."),
    seed: int = typer.Option(0, "--seed"),
    split: str | None = typer.Option(None, "--split", help="Split to draw from (never the test split)."),
    tokens: int = typer.Option(1, "--tokens", help="Average the KL over the first T output tokens."),
    accuracy: int = typer.Option(0, "--accuracy", help="Also score N samples at each K (Fig. 8a)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write KL vs K (log scale) to this PNG."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Local directory or parquet file of the dataset."),
    profile_dir: Path | None = typer.Option(None, "--profile-dir", help="Profile store for the record."),
    save: bool = typer.Option(True, "--save/--no-save", help="Save the record for `run --k auto`."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """Choose K: the first layer whose mean KL(P_vtw || P_base) over a small subset is below eta."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .. import profiles, tasks
    from ..calibrate import calibrate as run_calibration
    from ..calibrate import to_records

    task = tasks.get(dataset)
    etas = parse_etas(eta) if eta is not None else None
    loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code)
    prof = loaded.profile or {}
    etas = etas or [float(prof.get("default_eta", 0.003))]
    k_min = k_min if k_min is not None else int(prof.get("k_min", 5))
    console = stderr_console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        ids: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in ids:
                ids[stage] = bar.add_task(f"{stage} sweep", total=total)
            bar.update(ids[stage], completed=done)

        result = run_calibration(loaded, task, etas, k_min=k_min, samples=samples, seed=seed, split=split,
                                 tokens=tokens, accuracy=accuracy, source=data_dir,
                                 progress=progress)
    rec = result.to_dict()
    saved = None
    if save:
        for r in to_records(result, loaded.source):
            saved = profiles.save_record(loaded.name, r, profile_dir)
    if plot is not None:
        from ..plots import plot_calibration

        plot_calibration(rec, plot)
    if json_out:
        chosen = {str(e): result.k_for(e) for e in etas}
        emit_json({"model": result.model, "dataset": result.dataset, "eta": etas[0] if len(etas) == 1 else etas,
                   "k": chosen[str(etas[0])] if len(etas) == 1 else chosen, "k_min": result.k_min,
                   "num_layers": result.num_layers, "samples": result.samples, "split": result.split,
                   "seed": result.seed, "tokens": result.tokens, "kl": result.kl, "kl_max": result.kl_max,
                   "accuracy": result.accuracy, "baseline_accuracy": result.baseline_accuracy,
                   "seconds": result.seconds, "record": str(saved) if saved else None, "env": result.env})
    _render(console, result, saved, plot)


def _render(console, result, saved, plot) -> None:
    from rich.table import Table

    table = Table(title=f"KL(P_vtw || P_base): {result.model} on {result.dataset}/{result.split}, "
                        f"{result.samples} samples, first {result.tokens} token(s)")
    table.add_column("K", justify="right")
    table.add_column("mean KL", justify="right")
    table.add_column("max KL", justify="right")
    if result.accuracy:
        table.add_column("accuracy", justify="right")
    table.add_column("chosen for η")
    for k in sorted(int(x) for x in result.kl):
        marks = [f"{e:g}" for e in result.etas if result.k_for(e) == k]
        row = [str(k), f"{result.kl[str(k)]:.3g}", f"{result.kl_max[str(k)]:.3g}"]
        if result.accuracy:
            row.append(f"{result.accuracy[str(k)]:.3f}")
        row.append(("◀ " + ", ".join(marks)) if marks else "")
        table.add_row(*row, style="bold green" if marks else None)
    console.print(table)
    for e in result.etas:
        k = result.k_for(e)
        if k < result.num_layers:
            console.print(f"η={e:g}: K={k} (layers {k}..{result.num_layers - 1} run on text only)")
        else:
            console.print(f"[yellow]η={e:g}: no K in {result.k_min}..{result.num_layers - 1} has mean KL below η; "
                          f"recommend no withdrawal (K={result.num_layers})[/yellow]")
    if result.baseline_accuracy is not None:
        console.print(f"stock model accuracy on the same samples: {result.baseline_accuracy:.3f}")
    console.print(f"[dim]{result.seconds:.1f}s" + (f"; record saved to {saved}" if saved else "")
                  + (f"; plot {plot}" if plot else "") + "[/dim]")
