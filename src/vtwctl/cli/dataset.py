"""``vtwctl run --dataset``: a whole benchmark, sharded or under torchrun/accelerate; ``render`` shows its summary
(``vtwctl merge`` too)."""

from __future__ import annotations

import os
from pathlib import Path

from .common import (
    Progress,
    check_device,
    emit_json,
    load_model,
    model_name,
    resolve_k,
    stderr_console,
)


def run_dataset(spec, dataset: str, *, split, limit, output, data_dir, judge_url=None, judge_model=None,
                calibration_dir=None, json_out: bool = False, skip_bad_samples: bool = False) -> None:
    """``vtwctl run --dataset``: ``spec`` (a checked ``RunSpec``) over a benchmark, written to ``output``."""
    from dataclasses import replace

    from .. import preflight, tasks
    from ..errors import VTWError
    from ..evaluate import distributed_context, evaluate, merge, select
    from ..records import check_store
    from ..results import check_target, locked
    from ..spec import K

    task = tasks.get(dataset)
    judge = None
    if judge_url is not None:
        from ..tasks.judge import DEFAULT_MODEL, OpenAIJudge

        if task.judge_parser is None or spec.scoring != "lmms-eval":
            raise VTWError(f"--judge-url is for the tasks lmms-eval scores with a GPT judge (mmbench) under "
                           f"--scoring lmms-eval, not {task.name} with --scoring {spec.scoring}")
        judge = OpenAIJudge(judge_url, judge_model or DEFAULT_MODEL)
        judge.check()
    elif judge_model is not None:
        raise VTWError("--judge-model needs --judge-url (the OpenAI-compatible endpoint)")
    index, count = spec.shard
    # everything that can be checked without the model is checked before it loads
    name = model_name(spec.model)  # an unknown model or missing directory is refused here
    split = preflight.check_split(task, split)
    if spec.k.auto:
        check_store(name, calibration_dir)
    check_device(spec.device)
    rank, world, dist = distributed_context()
    if world > 1:
        if spec.shard != (0, 1):
            raise VTWError("--shard and a torchrun/accelerate launch both split the data; use one")
        if output is None:
            raise VTWError("a multi-process run needs --output (each rank writes OUTPUT.rankI, rank 0 merges)")
        index, count = rank, world
        if spec.device == "auto":
            import torch

            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if torch.cuda.is_available() else "cpu"
            spec = replace(spec, device=device)
        spec = replace(spec, shard=(index, count))
    out_path = Path(f"{output}.rank{rank}") if world > 1 else output
    check_target(out_path)
    if world > 1 and rank == 0:
        check_target(output)
    samples = select(task, split, data_dir, limit, (index, count))  # data problems show before the model loads
    console = stderr_console()
    with locked(out_path):  # held from before the model loads: a second run on this file is refused at once
        loaded = load_model(spec.model, spec.device, spec.dtype, spec.attn_implementation, spec.trust_remote_code,
                            spec.prompt_style)
        found = resolve_k(spec.k, loaded.num_layers, loaded.name, task.name, calibration_dir, console)
        if found is None:
            raise VTWError(f"no calibration record for {loaded.name} on {task.name}; run "
                           f"`vtwctl calibrate --model {loaded.spec} --dataset {task.name}` or pass --k")
        run = replace(spec, k=K(found.layer(loaded.num_layers)))
        own = spec.own_layer()
        shown = own if own is not None else found.layer(loaded.num_layers)
        label = f"{task.name} K={shown}" + (f" ({spec.method})" if spec.method not in ("vtw", "stock") else "")
        with Progress(label, console, enabled=rank == 0) as bar:
            try:
                summary = evaluate(loaded, task, run, split=split, samples=samples, output=out_path, judge=judge,
                                   progress=lambda d, n: bar.update(d, n), skip_bad_samples=skip_bad_samples)
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


def warn(summary) -> None:
    """What the files showed (torn lines, repairs) and the samples skipped, as warnings on stderr."""
    console = stderr_console()
    notes = list(summary.warnings)
    if summary.skipped:
        ids = ", ".join(summary.skipped_ids[:5]) + (", ..." if summary.skipped > 5 else "")
        notes.append(f"{summary.skipped} sample{'s' if summary.skipped > 1 else ''} skipped: their data could not be "
                     f"decoded ({ids}); the metrics cover the other {summary.samples} (the records say why)")
    for note in notes:
        console.print(f"warning: {note}", style="yellow", highlight=False, markup=False, soft_wrap=True)


def render(summary, json_out: bool) -> None:
    warn(summary)
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
    if summary.skipped:
        t.add_row("skipped (bad data)", str(summary.skipped))
    console = stderr_console()
    console.print(t)
    if summary.output:
        console.print(f"[dim]records: {summary.output}[/dim]", soft_wrap=True)
