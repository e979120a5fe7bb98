"""Each method's measured prefill latency against its exact FLOPs ratio, side by side in one run.

Every method (VTW, FastV, DART, PyramidDrop, SparseVLM, VisionZip, VisionZip+VTW) runs on the same input through
vtwctl's measurement protocol (``vtwctl.measure.measure_many`` via ``costs.measured_rows``: warm-up, then repeats
interleaved round-robin so that load changes hit every method alike); the JSON holds, per method, the exact
prefill FLOPs ratio to the stock model and the measured prefill speed-up, and their quotient ("how much of the
FLOPs saving shows in time"). No timed assertion: a result to read.

    python bench/methods_latency.py                                     # the demo model on shapes sample 0, CPU
    python bench/methods_latency.py --bench-llava 12 --k 6 --out bench/results/methods_latency_llava_shape.json
    python bench/methods_latency.py --model llava-1.5-7b --k 16 --device cuda --out bench/results/methods_gpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# the demo model is 8 layers deep with 144 vision tokens: stage layers scaled to it; on a 32-layer LLaVA use
# --paper-settings for the authors' defaults
DEMO_SETTINGS = {"pdrop": {"layers": (2, 4, 6)}, "sparsevlm": {"layers": (1, 3, 5), "retain": 64}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--k", type=int, default=4, help="VTW's K (and visionzip+vtw's)")
    ap.add_argument("--methods", default="stock,vtw,fastv,dart,pdrop,sparsevlm,visionzip,visionzip+vtw")
    ap.add_argument("--paper-settings", action="store_true", help="the authors' defaults, not the demo's scaling")
    ap.add_argument("--bench-llava", type=int, default=None, metavar="LAYERS",
                    help="a LLaVA-1.5-shaped model with random weights instead (576 vision tokens, Llama LAYERS x "
                         "1024; testing.checkpoints.save_bench_llava); stage layers scaled from the authors' 32")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default="bench/results/methods_latency.json")
    args = ap.parse_args(argv)

    from vtwctl import tasks
    from vtwctl.costs import measured_rows, row_settings
    from vtwctl.env import environment
    from vtwctl.loading import load
    from vtwctl.measure import Protocol
    from vtwctl.spec import RunSpec

    settings = {} if args.paper_settings else DEMO_SETTINGS
    if args.bench_llava:
        import tempfile

        from vtwctl.testing.checkpoints import save_bench_llava

        n = args.bench_llava
        args.model = str(save_bench_llava(Path(tempfile.mkdtemp()) / "bench-llava", num_layers=n))
        scaled = sorted({max(1, round(n * f / 32)) for f in (8, 16, 24)})  # the authors' 8/16/24 of 32 layers
        settings = {"pdrop": {"layers": tuple(scaled)},
                    "sparsevlm": {"layers": tuple(sorted({round(n * f / 32) for f in (2, 6, 15)}))}}
    loaded = load(args.model, device=args.device, dtype=args.dtype)
    from vtwctl.evaluate import select

    task = tasks.get(args.dataset)
    s = list(select(task, None, None, args.index + 1, (0, 1)).decoded())[-1]
    inputs = loaded.build_inputs([s.prompt], images=[list(s.images or [])], videos=[s.video])
    spec = RunSpec(model=args.model, settings=settings)
    rows = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    table, _, tokens = measured_rows(loaded, inputs, [args.k], spec, Protocol(2, args.warmup, args.repeats),
                                     method="exact", rows=rows)
    base = next(r for r in table if r.method == "baseline")
    out = {"model": loaded.name, "sample": s.id, "tokens": tokens, "k": args.k,
           "settings": row_settings(spec, rows),
           "protocol": {"repeats": args.repeats, "warmup": args.warmup, "interleaved": True},
           "env": environment(loaded), "rows": []}
    for r in table:
        speedup = base.prefill_s / r.prefill_s if r.prefill_s else None
        out["rows"].append({"method": r.method, "k": r.k, "tflops": r.tflops, "flops_ratio": r.ratio,
                            "flops_saving_x": 1 / r.ratio if r.ratio else None, "prefill_s": r.prefill_s,
                            "prefill_speedup_x": speedup,
                            "share_of_flops_saving_in_time": speedup * r.ratio if speedup and r.ratio else None,
                            "prefill_spread": r.spread.get("prefill"), "stable": r.spread.get("stable")})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    for row in out["rows"]:
        print(f"{row['method']:>15}  FLOPs {100 * row['flops_ratio']:6.1f} %  prefill {1000 * row['prefill_s']:7.2f} ms"
              f"  speed-up {row['prefill_speedup_x']:.2f}x (FLOPs {row['flops_saving_x']:.2f}x)")
    return out


if __name__ == "__main__":
    main()
