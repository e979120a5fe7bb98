"""``vtwctl run --dataset`` (a whole benchmark) and ``vtwctl merge`` (shard files -> one summary)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from . import app
from .common import (
    JSON,
    Progress,
    check_device,
    emit_json,
    load_model,
    model_name,
    resolve_k,
    stderr_console,
)


def _resolve_k(given, loaded, task, profile_dir, console) -> int | None:
    from ..errors import VTWError

    found = resolve_k(given, loaded.num_layers, loaded.name, task.name, profile_dir, console)
    if found is None:
        raise VTWError(f"no calibration record for {loaded.name} on {task.name}; run "
                       f"`vtwctl calibrate --model {loaded.spec} --dataset {task.name}` or pass --k")
    return found.k


def run_dataset(*, model, dataset, split, limit, batch_size, output, shard, image_mode, data_dir, k, no_withdraw,
                positions, max_new_tokens, profile_dir, device, dtype, attn_implementation, json_out,
                trust_remote_code=False, scoring="lmms-eval", judge_url=None, judge_model=None, method="vtw",
                seed=0, fastv_k=2, fastv_ratio=0.5, prompt_style="hf") -> None:
    from .. import preflight, tasks
    from ..errors import VTWError
    from ..evaluate import IMAGE_MODES, distributed_context, evaluate, merge, parse_shard, select
    from ..methods import canonical
    from ..records import check_store
    from ..results import check_target, locked

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
    method = canonical(method)
    if no_withdraw:
        method = "stock"
    if k is None and method in ("vtw", "vtw-random", "rand"):
        raise VTWError("say which K: --k K, --k auto (from the calibration record) or --no-withdraw")
    if method == "stock" and k not in (None, "auto"):
        raise VTWError("--k and --no-withdraw contradict each other")
    from ..spec import STOCK, K

    given = STOCK if method in ("stock", "fastv") else K.parse(k)
    index, count = parse_shard(shard)
    # everything that can be checked without the model is checked before it loads
    name = model_name(model)  # an unknown model or missing directory is refused here
    split = preflight.check_split(task, split)
    if given.auto:
        check_store(name, profile_dir)
    check_device(device)
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
    out_path = Path(f"{output}.rank{rank}") if world > 1 else output
    check_target(out_path)
    if world > 1 and rank == 0:
        check_target(output)
    samples = select(task, split, data_dir, limit, (index, count))  # data problems show before the model loads
    console = stderr_console()
    with locked(out_path):  # held from before the model loads: a second run on this file is refused at once
        loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code, prompt_style)
        chosen = _resolve_k(given, loaded, task, profile_dir, console)
        shown = fastv_k if method == "fastv" else (chosen if chosen is not None else loaded.num_layers)
        label = f"{task.name} K={shown}" + (f" ({method})" if method not in ("vtw", "stock") else "")
        with Progress(label, console, enabled=rank == 0) as bar:
            try:
                summary = evaluate(loaded, task, chosen, positions=positions, split=split, limit=limit,
                                   batch_size=batch_size, output=out_path, shard=(index, count),
                                   image_mode=image_mode, max_new_tokens=max_new_tokens, source=data_dir,
                                   progress=lambda d, n: bar.update(d, n), scoring=scoring, judge=judge,
                                   samples=samples, method=method, seed=seed, fastv_k=fastv_k,
                                   fastv_ratio=fastv_ratio)
            except KeyboardInterrupt:
                if out_path:
                    console.print(f"interrupted; finished samples are in {out_path} (run again to resume)",
                                  highlight=False, soft_wrap=True, markup=False)
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
        console.print(f"[dim]records: {summary.output}[/dim]", soft_wrap=True)


@app.command("merge")
def merge_cmd(
    files: list[Path] = typer.Argument(..., help="Results files (JSONL) of the shards of one run."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the merged records here."),
    partial: bool = typer.Option(False, "--partial", help="Summarise the shards present even if some are missing."),
    json_out: bool = JSON,
) -> None:
    """Combine the shard files of one `run --dataset` into one summary."""
    from ..evaluate import merge

    summary = merge([str(f) for f in files], output, partial=partial)
    if summary.missing_shards:
        stderr_console().print(f"[yellow]partial: shard{'s' if len(summary.missing_shards) > 1 else ''} "
                               f"{', '.join(summary.missing_shards)} missing from this summary[/yellow]")
    render(summary, json_out)
