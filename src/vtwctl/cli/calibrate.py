"""``vtwctl calibrate``: the KL sweep over K (Eq. 6), saved as a calibration record."""

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
    stderr_console,
)

ETA_MAX = 1.0  # a KL threshold above 1 nat accepts any K; the paper uses 0.001..0.006


def parse_etas(text: str) -> list[float]:
    import math

    from ..errors import VTWError

    try:
        etas = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise VTWError(f"--eta must be a number or a comma-separated list of numbers, got {text!r}") from None
    if not etas or any(e <= 0 for e in etas):
        raise VTWError(f"--eta must be > 0, got {text!r}")
    if any(not math.isfinite(e) or e > ETA_MAX for e in etas):
        raise VTWError(f"--eta must be a finite KL threshold in (0, {ETA_MAX:g}], got {text!r}")
    if len(set(etas)) != len(etas):
        raise VTWError(f"--eta lists a value twice: {text!r}")
    return etas


@app.command()
def calibrate(
    model: str = MODEL,
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="Task to calibrate on (its calibration split)."),
    eta: str | None = typer.Option(None, "--eta", help="Threshold(s), e.g. 0.003 or 0.006,0.005,0.004 "
                                   "(default: the model profile's, else 0.003)."),
    k_min: int | None = typer.Option(None, "--k-min", help="First candidate K (default 5, as the paper)."),
    samples: int = typer.Option(20, "--samples", "-n", min=1, help="Calibration samples."),
    seed: int = typer.Option(0, "--seed"),
    split: str | None = typer.Option(None, "--split", help="Split to draw from (never the test split)."),
    tokens: int = typer.Option(1, "--tokens", min=1, help="Average the KL over the first T output tokens."),
    accuracy: int = typer.Option(0, "--accuracy", min=0, help="Also score N samples at each K (Fig. 8a)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write KL vs K (log scale) to this PNG."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Local directory or parquet file of the dataset."),
    profile_dir: Path | None = CALIBRATION_DIR,
    save: bool = typer.Option(True, "--save/--no-save", help="Save the record for `run --k auto`."),
    first: int | None = typer.Option(None, "--first", min=1,
                                     help="Take the first N documents instead of a random subset; with --split test "
                                          "this is the authors' protocol (for reproduction: the record warns)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Samples per padded sweep."),
    prompt_style: str = typer.Option("hf", "--prompt-style",
                                     help="hf (the checkpoint's chat template) or paper (the authors' template)."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """Choose K: the first layer whose mean KL(P_vtw || P_base) over a small subset is below eta."""
    from dataclasses import replace

    from .. import preflight, records, tasks
    from ..calibrate import Sweep, to_records
    from ..calibrate import calibrate as run_calibration
    from ..errors import VTWError
    from ..files import check_file_target
    from ..loading import check_prompt_style

    task = tasks.get(dataset)
    etas = parse_etas(eta) if eta is not None else None
    if k_min is not None and k_min < 0:
        raise VTWError(f"k_min={k_min} is out of range: it must be >= 0")
    split = split or task.calibration_split
    if split == task.test_split and first is None:
        raise VTWError(f"calibration must not use the test split ({split}) of {task.name} "
                       "(--split test --first N reproduces the authors' protocol)")
    check_prompt_style(prompt_style)
    sweep = Sweep(samples=samples, seed=seed, tokens=tokens, accuracy=accuracy, first=first,
                  batch_size=batch_size)  # checked here, before anything is read (k_min: once the model is known)
    if first is not None:
        samples = first
    preflight.check_data(task, split, data_dir, need=samples, what="--first" if first is not None else "--samples")
    if accuracy:
        preflight.check_data(task, split, data_dir, need=accuracy, what="--accuracy")
    name = model_name(model)
    store_file = records.check_store(name, profile_dir, write=save)
    check_file_target(plot, "plot")
    check_device(device)
    loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code, prompt_style)
    prof = loaded.profile or {}
    etas = etas or [float(prof.get("default_eta", 0.003))]
    sweep = replace(sweep, k_min=k_min if k_min is not None else int(prof.get("k_min", 5)))
    console = stderr_console()
    with Progress("calibration", console) as bar:
        result = run_calibration(loaded, task, etas, sweep, split=split, source=data_dir,
                                 progress=lambda stage, done, total: bar.update(done, total, stage=stage))
    if result.warning:
        console.print(f"[yellow]warning: {result.warning}[/yellow]", highlight=False)
    rec = result.to_dict()
    saved, failed = None, []
    if save:
        try:
            for r in to_records(result, loaded.source):
                saved = records.save_record(loaded.name, r, profile_dir)
        except (VTWError, OSError) as exc:  # the store changed under us: keep the result on screen
            failed.append(f"the calibration record could not be saved to {store_file}: {_reason(exc)}")
            saved = None
    if plot is not None:
        from ..plots import plot_calibration

        try:
            plot_calibration(rec, plot)
        except OSError as exc:
            failed.append(f"cannot write plot {plot}: {_reason(exc)}")
            plot = None
    if json_out:
        chosen = {str(e): result.k_for(e) for e in etas}
        emit_json({"model": result.model, "dataset": result.dataset, "eta": etas[0] if len(etas) == 1 else etas,
                   "k": chosen[str(etas[0])] if len(etas) == 1 else chosen, "k_min": result.k_min,
                   "num_layers": result.num_layers, "samples": result.samples, "split": result.split,
                   "seed": result.seed, "tokens": result.tokens, "kl": result.kl, "kl_max": result.kl_max,
                   "accuracy": result.accuracy, "baseline_accuracy": result.baseline_accuracy,
                   "accuracy_samples": result.accuracy_samples, "accuracy_ids": result.accuracy_ids,
                   "sample_ids": result.sample_ids, "selection": result.selection, "warning": result.warning,
                   "seconds": result.seconds, "record": str(saved) if saved else None, "env": result.env})
    else:
        _render(console, result, saved, plot)
    if failed:
        where = "on stdout" if json_out else "printed above"
        raise VTWError("; ".join(failed) + f"; the result is {where}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc)


def _render(console, result, saved, plot) -> None:
    from rich.table import Table

    table = Table(title=f"KL(P_vtw || P_base): {result.model} on {result.dataset}/{result.split}, "
                        f"{result.samples} samples, first {result.tokens} token(s)")
    table.add_column("K", justify="right")
    table.add_column("mean KL", justify="right")
    table.add_column("max KL", justify="right")
    if result.accuracy:
        table.add_column(f"accuracy ({result.accuracy_samples} samples)", justify="right")
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
        console.print(f"stock model accuracy on {result.accuracy_samples} samples: {result.baseline_accuracy:.3f}")
    console.print(f"[dim]{result.seconds:.1f}s" + (f"; record saved to {saved}" if saved else "")
                  + (f"; plot {plot}" if plot else "") + "[/dim]", soft_wrap=True)
