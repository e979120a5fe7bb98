"""``vtwctl run``: one prompt (with an image or a video) through the model, with or without VTW."""

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
    method_fields,
    method_settings,
    model_name,
    parse_pivots,
    record_summary,
    resolve_k,
    stderr_console,
    text_option,
)


@app.command()
def run(
    model: str = MODEL,
    image: Path | None = typer.Option(None, "--image", "-i", help="Image file."),
    video: Path | None = typer.Option(None, "--video", help="Video file, folder of frames, or .npy array."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The question or instruction."),
    example: int | None = typer.Option(None, "--example", min=0,
                                       help="Use test sample N of the demo 'shapes' benchmark (image + question)."),
    k: str | None = typer.Option(None, "--k", help="Withdrawal layer K (0-based; N = no withdrawal) or 'auto'."),
    no_withdraw: bool = typer.Option(False, "--no-withdraw", help="Run the stock model (= --method stock)."),
    method: str = typer.Option("vtw", "--method",
                               help="stock | vtw | vtw-random (VTW at a random K in K-8..K+8 per sample, Table 2's "
                                    "VTW†) | rand (as many random input tokens as vision tokens dropped at K) | "
                                    "fastv | dart | pdrop | visionzip | visionzip+vtw ... (docs/methods.md; "
                                    "their settings: --set)."),
    fastv_k: int | None = typer.Option(None, "--fastv-k", help="FastV layer K (default: the preset's)."),
    fastv_ratio: float | None = typer.Option(None, "--fastv-ratio",
                                             help="FastV: the fraction of vision tokens DROPPED (default 0.5)."),
    fastv_preset: str = typer.Option("paper", "--fastv-preset", help="paper (K=2) or authors (K=3)."),
    dart_k: int | None = DART_K,
    dart_ratio: float | None = DART_RATIO,
    dart_pivots: str | None = DART_PIVOTS,
    set_: list[str] | None = SET,
    compare: bool = typer.Option(False, "--compare",
                                 help="Answer with the stock model and with VTW at K, side by side (Fig. 6)."),
    prompt_style: str = typer.Option("hf", "--prompt-style",
                                     help="hf (the checkpoint's chat template) or paper (the authors' LLaVA "
                                          "conversation template, with its system prompt)."),
    positions: str = typer.Option("keep", "--positions", help="keep | rearrange (Table 6)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1,
                                              help="Default: 32 for one prompt; with --dataset the task's "
                                                   "lmms-eval generation length (docs/tasks.md)."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Run a whole benchmark (shapes, sqa, pope, ...)."),
    split: str | None = typer.Option(None, "--split", help="Benchmark split (default: the task's test split)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N samples only."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1),
    output: Path | None = typer.Option(None, "--output", "-o", help="JSONL results, written as it goes; resumable."),
    shard: str | None = typer.Option(None, "--shard", help="I/N: run shard I (0-based) of N (SLURM arrays)."),
    image_mode: str = typer.Option("normal", "--image-mode", help="normal | blank | none (Table 1 ablation)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Local directory or parquet file of the dataset."),
    scoring: str = typer.Option("lmms-eval", "--scoring",
                                help="lmms-eval (lmms-eval's own answer rules) | lenient (more forgiving parsers)."),
    judge_url: str | None = typer.Option(None, "--judge-url",
                                         help="OpenAI-compatible API for MMBench's GPT answer matching "
                                              "(key: $OPENAI_API_KEY); default: MMBench's static rules."),
    judge_model: str | None = typer.Option(None, "--judge-model", help="Judge model (default gpt-4o-2024-11-20)."),
    skip_bad_samples: bool = typer.Option(False, "--skip-bad-samples",
                                          help="With --dataset: a sample whose data cannot be decoded (a corrupt "
                                               "image) is recorded as skipped and left out of the metrics, instead "
                                               "of stopping the run (exit 2)."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames sampled from --video."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature"),
    seed: int | None = typer.Option(None, "--seed"),
    compile_: bool = typer.Option(False, "--compile",
                                  help="Greedy decoding on the compiled fast path (static caches, torch.compile; "
                                       "the first call compiles)."),
    profile_dir: Path | None = CALIBRATION_DIR,
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """Answer one prompt about an image (or video), with VTW at layer K or without it."""
    from ..errors import VTWError
    from ..evaluate import parse_shard
    from ..spec import AUTO, NEEDS_K, Generation, RunSpec, canonical

    method = "stock" if no_withdraw else canonical(method)
    prompt = text_option(prompt)
    if method == "stock" and k not in (None, "auto"):
        raise VTWError("--k and --no-withdraw contradict each other")
    settings = method_settings(set_, fastv_k=fastv_k, fastv_ratio=fastv_ratio, dart_k=dart_k, dart_ratio=dart_ratio,
                               dart_pivots=None if dart_pivots is None else parse_pivots(dart_pivots))
    fastv_preset_into(settings, fastv_preset)
    # the one run specification, checked once here (before anything is read or loaded)
    spec = RunSpec(model=model, k=AUTO if k is None else k, method=method, settings=settings, seed=seed,
                   positions=positions, prompt_style=prompt_style, image_mode=image_mode, scoring=scoring,
                   generation=Generation(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature),
                   batch_size=batch_size, shard=parse_shard(shard), compiled=compile_, device=device, dtype=dtype,
                   attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if compare and (method != "vtw" or dataset is not None):
        raise VTWError("--compare answers one prompt with the stock model and with VTW: drop --method/--dataset")
    if compile_ and (dataset is not None or compare):
        raise VTWError("--compile answers one prompt: drop --dataset/--compare")
    if dataset is not None:
        if k is None and method in NEEDS_K:
            raise VTWError("say which K: --k K, --k auto (from the calibration record) or --no-withdraw")
        if image is not None or video is not None or prompt is not None or example is not None:
            raise VTWError("--dataset brings its own inputs: drop --image/--video/--prompt/--example")
        from .dataset import run_dataset

        run_dataset(spec, dataset, split=split, limit=limit, output=output, data_dir=data_dir, judge_url=judge_url,
                    judge_model=judge_model, calibration_dir=profile_dir, json_out=json_out,
                    skip_bad_samples=skip_bad_samples)
        return
    dataset_only = {"--split": split, "--limit": limit, "--output": output, "--shard": shard, "--data-dir": data_dir,
                    "--batch-size": batch_size if batch_size != 1 else None,
                    "--skip-bad-samples": True if skip_bad_samples else None,
                    "--image-mode": image_mode if image_mode != "normal" else None}
    given = [flag for flag, value in dataset_only.items() if value is not None]
    if given:
        raise VTWError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} with --dataset")
    _one_prompt(spec, image, video, prompt, example, frames, compare, profile_dir, json_out, k is not None)


def _one_prompt(spec, image, video, prompt, example, frames, compare, calibration_dir, json_out,
                k_given: bool = True) -> None:
    from .. import preflight, tasks
    from ..errors import VTWError
    from ..media import read_image, read_video

    expected = None
    if example is not None:
        if image is not None or video is not None or prompt is not None:
            raise VTWError("--example brings its own image and question: drop --image/--video/--prompt")
        from ..demo import shapes

        preflight.check_data(tasks.get("shapes"), "test", index=example, what="--example")
        sample_ = shapes.make_sample("test", example)
        img, prompt, expected = sample_["image"], sample_["question"], sample_["answer"]
        scored = tasks.get("shapes").open("test")[example]  # the same question as a task sample, for its scoring
    elif prompt is None:
        raise VTWError("give --prompt (with --image or --video), or --example N for a demo question")
    elif not prompt.strip():
        raise VTWError("--prompt is empty")
    else:
        img = read_image(image) if image is not None else None
    vid = read_video(video, frames) if video is not None else None
    name = model_name(spec.model)
    auto_dataset = "shapes" if example is not None else None
    if spec.k.auto:
        from ..records import check_store

        check_store(name, calibration_dir)
        missing = spec.k.record(name, auto_dataset, profile_dir=calibration_dir) is None
        if missing and spec.method in ("rand", "vtw-random"):
            raise VTWError(f"--method {spec.method} needs a K: pass --k K, or calibrate {name} for --k auto "
                           "(no calibration record found)")
        if missing and k_given:  # `--k auto` said: refused as `run --dataset` refuses it (no --k: stock, said)
            raise VTWError(f"--k auto: no calibration record for {name}" + (" on shapes" if auto_dataset else "")
                           + f"; run `vtwctl calibrate --model {spec.model}` or pass --k K (or --no-withdraw)")
    check_device(spec.device)
    loaded = load_model(spec.model, spec.device, spec.dtype, spec.attn_implementation, spec.trust_remote_code,
                        spec.prompt_style)
    if vid is not None and not loaded.takes_video:
        raise VTWError(f"{loaded.name} ({loaded.family}) does not take videos")
    n = loaded.num_layers
    console = stderr_console()
    found = resolve_k(spec.k, n, loaded.name, auto_dataset, calibration_dir, console)
    if found is None:
        console.print(f"no calibration record for {loaded.name}: running without withdrawal "
                      "(pass --k or run vtwctl calibrate)")
    rec = found.record if found is not None else None
    from dataclasses import replace

    from ..infer import compare as run_compare
    from ..infer import generate
    from ..methods import random_k, sample_seed
    from ..spec import STOCK, K

    run = replace(spec, k=STOCK if found is None else K(found.layer(n)),
                  generation=replace(spec.generation, max_new_tokens=spec.max_new_tokens or 32))
    inputs = loaded.build_inputs(prompt, images=[img] if img is not None else None,
                                 videos=[vid] if vid is not None else None)
    if compare:
        if found is None:
            raise VTWError("--compare needs a K to withdraw at: --k K or a calibration record for --k auto")
        both = run_compare(loaded, inputs, run)
        halves = {name: _result(loaded, g, spec.positions, n) for name, g in both.items()}
        if json_out:
            emit_json({**halves, "k_record": record_summary(rec), "prompt_style": spec.prompt_style})
            return
        _render_compare(console, halves)
        return
    seed = spec.seed or 0
    if spec.method == "vtw-random":  # found: refused above without a K
        run = replace(run, k=K(random_k(seed, prompt, found.layer(n), n)))
    gen = generate(loaded, inputs, run, seeds=[sample_seed(seed, prompt)])
    result = {**_result(loaded, gen, spec.positions, n), "k_record": record_summary(rec), "method": spec.method,
              "prompt_style": spec.prompt_style, "compiled": spec.compiled}
    result.update(method_fields(spec))
    if expected is not None:
        correct = tasks.get("shapes").process(scored, gen.answers[0], "lmms-eval")["correct"]
        result.update(example=example, question=prompt, expected=expected, correct=correct)
    if json_out:
        emit_json(result)
        return
    if expected is not None:
        console.print(f"[bold]demo test sample {example}[/bold]\n{prompt}\n[dim]expected: {expected}[/dim]")
    # on a terminal the answer is labelled; piped, stdout is the answer alone (or --json)
    import sys

    typer.echo(f"answer: {gen.answers[0]}" if sys.stdout.isatty() else gen.answers[0])
    if expected is not None:
        console.print(f"{'correct' if correct else 'wrong'} under the shapes task's scoring (expected {expected!r}; "
                      "letters in any case or form, yes/no and short answers as words: docs/demo.md)",
                      highlight=False, markup=False, soft_wrap=True)
    console.print(f"[dim]K={gen.k}/{n}  vision={result['num_vision_tokens']} text={result['num_text_tokens']}  "
                  f"new={result['new_tokens']}  prefill {gen.prefill_s:.3f}s  decode {gen.decode_s:.3f}s  "
                  f"total {gen.total_s:.3f}s[/dim]")
    if spec.compiled:
        console.print("[dim]--compile: the decode time includes compiling the step (once per model, K and "
                      "buffer size in a process)[/dim]")


def _result(loaded, gen, positions: str, n: int) -> dict:
    return {"model": loaded.name, "k": gen.k, "method": gen.method, "answer": gen.answers[0],
            "num_vision_tokens": gen.num_vision_tokens[0], "num_text_tokens": gen.num_text_tokens[0],
            "new_tokens": gen.new_tokens[0], "prefill_s": gen.prefill_s, "decode_s": gen.decode_s,
            "total_s": gen.total_s, "kv_bytes": gen.kv_bytes, "positions": positions, "num_layers": n}


def _render_compare(console, halves: dict) -> None:
    """Fig. 6: the two answers and their costs side by side."""
    from rich.table import Table

    stock, vtw = halves["stock"], halves["vtw"]
    t = Table(title=f"{stock['model']}: stock vs VTW at K={vtw['k']} (of {vtw['num_layers']} layers)")
    t.add_column("")
    t.add_column("stock")
    t.add_column(f"VTW K={vtw['k']}")
    t.add_row("answer", stock["answer"], vtw["answer"])
    t.add_row("new tokens", str(stock["new_tokens"]), str(vtw["new_tokens"]))
    for key, label in (("prefill_s", "prefill"), ("decode_s", "decode"), ("total_s", "total")):
        t.add_row(label, f"{stock[key] * 1000:.1f} ms", f"{vtw[key] * 1000:.1f} ms")
    kib = [f"{h['kv_bytes'] / 1024:.1f} KiB" if h["kv_bytes"] is not None else "-" for h in (stock, vtw)]
    t.add_row("KV cache", *kib)
    console.print(t)
    console.print("[dim]timings: one run each, after one untimed warm-up run of each (not repeated: `vtwctl "
                  "profile` takes medians of repeats)[/dim]", soft_wrap=True)
