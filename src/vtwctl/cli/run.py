"""``vtwctl run``: one prompt (with an image or a video) through the model, with or without VTW."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import ATTN, DEVICE, DTYPE, JSON, MODEL, TRUST, emit_json, load_model, parse_k, stderr_console


@app.command()
def run(
    model: str = MODEL,
    image: Path | None = typer.Option(None, "--image", "-i", help="Image file."),
    video: Path | None = typer.Option(None, "--video", help="Video file, folder of frames, or .npy array."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The question or instruction."),
    example: int | None = typer.Option(None, "--example", min=0,
                                       help="Use test sample N of the demo 'shapes' benchmark (image + question)."),
    k: str | None = typer.Option(None, "--k", help="Withdrawal layer K (0-based; N = no withdrawal) or 'auto'."),
    no_withdraw: bool = typer.Option(False, "--no-withdraw", help="Run the stock model."),
    positions: str = typer.Option("keep", "--positions", help="keep | rearrange (Table 6)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1,
                                              help="Default: 32 for one prompt, the task's for --dataset."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Run a whole benchmark (shapes, sqa, pope, ...)."),
    split: str | None = typer.Option(None, "--split", help="Benchmark split (default: the task's test split)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N samples only."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1),
    output: Path | None = typer.Option(None, "--output", "-o", help="JSONL results, written as it goes; resumable."),
    shard: str | None = typer.Option(None, "--shard", help="I/N: run shard I (0-based) of N (SLURM arrays)."),
    image_mode: str = typer.Option("normal", "--image-mode", help="normal | blank | none (Table 1 ablation)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Local directory or parquet file of the dataset."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames sampled from --video."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature"),
    seed: int | None = typer.Option(None, "--seed"),
    profile_dir: Path | None = typer.Option(None, "--profile-dir", help="Where calibration records live."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn_implementation: str | None = ATTN,
    trust_remote_code: bool = TRUST,
    json_out: bool = JSON,
) -> None:
    """Answer one prompt about an image (or video), with VTW at layer K or without it."""
    from ..errors import VTWError
    from ..infer import generate
    from ..media import read_image, read_video

    if positions not in ("keep", "rearrange"):
        raise VTWError(f"--positions must be keep or rearrange, got {positions!r}")
    if dataset is not None:
        if image is not None or video is not None or prompt is not None or example is not None:
            raise VTWError("--dataset brings its own inputs: drop --image/--video/--prompt/--example")
        from .bench_run import run_dataset

        run_dataset(model=model, dataset=dataset, split=split, limit=limit, batch_size=batch_size, output=output,
                    shard=shard, image_mode=image_mode, data_dir=data_dir, k=k, no_withdraw=no_withdraw,
                    positions=positions, max_new_tokens=max_new_tokens, profile_dir=profile_dir, device=device,
                    dtype=dtype, attn_implementation=attn_implementation, json_out=json_out,
                    trust_remote_code=trust_remote_code)
        return
    max_new_tokens = max_new_tokens or 32
    expected = None
    if example is not None:
        if image is not None or video is not None or prompt is not None:
            raise VTWError("--example brings its own image and question: drop --image/--video/--prompt")
        from ..demo import shapes

        sample = shapes.make_sample("test", example)
        img, prompt, expected = sample["image"], sample["question"], sample["answer"]
    elif prompt is None:
        raise VTWError("give --prompt (with --image or --video), or --example N for a demo question")
    else:
        img = read_image(image) if image is not None else None
    vid = read_video(video, frames) if video is not None else None
    loaded = load_model(model, device, dtype, attn_implementation, trust_remote_code)
    if vid is not None and not loaded.takes_video:
        raise VTWError(f"{loaded.name} ({loaded.family}) does not take videos")
    n = loaded.num_layers
    chosen = parse_k(k, no_withdraw, n)
    console = stderr_console()
    if chosen == "auto":
        from ..profiles import records

        recs = [r for r in records(loaded.name, profile_dir) if r.get("k") is not None]
        if recs:
            rec = next((r for r in reversed(recs) if r.get("dataset") == "*"), recs[-1])
            chosen = int(rec["k"])
            console.print(f"K={chosen} from the calibration record ({rec.get('dataset')}, "
                          f"eta={rec.get('eta')}, {rec.get('source', 'vtwctl calibrate')})")
        else:
            console.print(f"no calibration record for {loaded.name}: running without withdrawal "
                          "(pass --k or run vtwctl calibrate)")
            chosen = None
    inputs = loaded.build_inputs(prompt, images=[img] if img is not None else None,
                                 videos=[vid] if vid is not None else None)
    gen = generate(loaded, inputs, k=chosen, positions=positions, max_new_tokens=max_new_tokens,
                   do_sample=sample, temperature=temperature, seed=seed)
    result = {
        "model": loaded.name, "k": gen.k, "answer": gen.answers[0],
        "num_vision_tokens": gen.num_vision_tokens[0], "num_text_tokens": gen.num_text_tokens[0],
        "new_tokens": gen.new_tokens[0], "prefill_s": gen.prefill_s, "decode_s": gen.decode_s,
        "total_s": gen.total_s, "positions": positions, "num_layers": n,
    }
    if expected is not None:
        result.update(example=example, question=prompt, expected=expected)
    if json_out:
        emit_json(result)
        return
    if expected is not None:
        console.print(f"[bold]demo test sample {example}[/bold]\n{prompt}\n[dim]expected: {expected}[/dim]")
    typer.echo(gen.answers[0])
    console.print(f"[dim]K={gen.k}/{n}  vision={result['num_vision_tokens']} text={result['num_text_tokens']}  "
                  f"new={result['new_tokens']}  prefill {gen.prefill_s:.3f}s  decode {gen.decode_s:.3f}s  "
                  f"total {gen.total_s:.3f}s[/dim]")
