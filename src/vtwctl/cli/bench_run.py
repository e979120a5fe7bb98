"""``vtwctl run --dataset`` (a whole benchmark) and ``vtwctl merge`` (shard files -> one summary)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from . import app
from .common import JSON, emit_json, load_model, parse_k, stderr_console


def _resolve_k(k, no_withdraw, loaded, task, profile_dir, console):
    from ..errors import VTWError
    from ..profiles import k_for

    n = loaded.num_layers
    chosen = parse_k(k, no_withdraw, n)
    if k is None and not no_withdraw:
        raise VTWError("say which K: --k K, --k auto (from the calibration record) or --no-withdraw")
    if chosen == "auto":
        rec = k_for(loaded.name, task.name, profile_dir=profile_dir)
        if rec is None:
            raise VTWError(f"no calibration record for {loaded.name} on {task.name}; run "
                           f"`vtwctl calibrate --model {loaded.spec} --dataset {task.name}` or pass --k")
        chosen = int(rec["k"])
        console.print(f"--k auto: K={chosen} from the calibration record of {loaded.name} on {task.name} "
                      f"(eta={rec.get('eta')}, {rec.get('source', 'vtwctl calibrate')})")
    return None if chosen is None or chosen >= n else chosen


def run_dataset(*, model, dataset, split, limit, batch_size, output, shard, image_mode, data_dir, k, no_withdraw,
                positions, max_new_tokens, profile_dir, device, dtype, attn_implementation, json_out,
                trust_remote_code=False, scoring="lmms-eval", judge_url=None, judge_model=None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .. import tasks
    from ..errors import VTWError
    from ..evaluate import IMAGE_MODES, distributed_context, evaluate, merge, parse_shard, select

    task = tasks.get(dataset)
    if image_mode not in IMAGE_MODES:
        raise VTWError(f"--image-mode must be one of {', '.join(IMAGE_MODES)}, got {image_mode!r}")
    if scoring not in tasks.SCORING_MODES:
        raise VTWError(f"--scoring must be one of {', '.join(tasks.SCORING_MODES)}, got {scoring!r}")
    judge = None
    if judge_url is not None:
        from ..tasks.judge import DEFAULT_MODEL, OpenAIJudge

        if task.judge_parser is None or scoring != "lmms-eval":
            raise VTWError(f"--judge-url is for the tasks lmms-eval scores with a GPT judge (mmbench) under "
                           f"--scoring lmms-eval, not {task.name} with --scoring {scoring}")
        judge = OpenAIJudge(judge_url, judge_model or DEFAULT_MODEL)
        judge.check()
    elif judge_model is not None:
        raise VTWError("--judge-model needs --judge-url (the OpenAI-compatible endpoint)")
    index, count = parse_shard(shard)
    rank, world, dist = distributed_context()
    if world > 1:
        if shard:
            raise VTWError("--shard and a torchrun/accelerate launch both split the data; use one")
        if output is None:
            raise VTWError("a multi-process run needs --output (each rank writes OUTPUT.rankI, rank 0 merges)")
        index, count = rank, world
        if device == "auto":
            import torch

            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if torch.cuda.is_available() else "cpu"
    console = stderr_console()
    samples = select(task, split, data_dir, limit, (index, count))  # data problems show before the model loads
    loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code)
    chosen = _resolve_k(k, no_withdraw, loaded, task, profile_dir, console)
    out_path = Path(f"{output}.rank{rank}") if world > 1 else output
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=rank != 0) as bar:
        job = bar.add_task(f"{task.name} K={chosen if chosen is not None else loaded.num_layers}", total=None,
                           rate="")

        def progress(done: int, total: int) -> None:
            t = bar.tasks[0]
            rate = f"{t.speed:.2f} samples/s" if t.speed else ""
            bar.update(job, completed=done, total=total, rate=rate)

        try:
            summary = evaluate(loaded, task, chosen, positions=positions, split=split, limit=limit,
                               batch_size=batch_size, output=out_path, shard=(index, count), image_mode=image_mode,
                               max_new_tokens=max_new_tokens, source=data_dir, progress=progress,
                               scoring=scoring, judge=judge, samples=samples)
        except KeyboardInterrupt:
            if out_path:
                console.print(f"interrupted; finished samples are in {out_path} (run again to resume)")
            raise
    if world > 1:
        dist.barrier()
        if rank != 0:
            return
        summary = merge([f"{output}.rank{r}" for r in range(world)], output)
    render(summary, json_out)


def render(summary, json_out: bool) -> None:
    if json_out:
        emit_json(summary.to_dict())
        return
    from rich.table import Table

    judged = f", judge {summary.judge}" if summary.judge else ""
    t = Table(title=f"{summary.model} on {summary.dataset}/{summary.split}: K={summary.k}, "
                    f"{summary.samples} samples ({summary.new_samples} new), scoring {summary.scoring}{judged}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key, val in summary.metrics.items():
        t.add_row(key, f"{val:.4f}" if isinstance(val, float) else str(val))
    t.add_row("mean latency (s)", f"{summary.mean_latency_s:.4f}")
    t.add_row("mean prefill (s)", f"{summary.mean_prefill_s:.4f}")
    t.add_row("mean vision / text tokens", f"{summary.mean_vision_tokens:.1f} / {summary.mean_text_tokens:.1f}")
    t.add_row("mean new tokens", f"{summary.mean_new_tokens:.2f}")
    console = stderr_console()
    console.print(t)
    if summary.output:
        console.print(f"[dim]records: {summary.output}[/dim]")


@app.command("merge")
def merge_cmd(
    files: list[Path] = typer.Argument(..., help="Results files (JSONL) of the shards of one run."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the merged records here."),
    json_out: bool = JSON,
) -> None:
    """Combine the shard files of one `run --dataset` into one summary."""
    from ..evaluate import merge

    render(merge([str(f) for f in files], output), json_out)
