"""Table 4 of the paper on one machine: latency per example, per-sample memory and TFLOPs of the stock
model, FastV and VTW, averaged over the first N samples of a benchmark (``bash bench/gpu.sh``).

Each sample goes through vtwctl's measurement protocol (``vtwctl.measure``: warm-up, interleaved
repeats, CUDA events, decode timed step by step, the peak memory of one end-to-end run above what the
model and inputs hold: the paper's "(b)-(a) per sample GM"). Per method the JSON holds the mean over
samples of each sample's median, the spread, the ratios to stock, and the environment.

    python bench/table4.py --model llava-next-7b --dataset sqa --k 16 --samples 20 --out bench/results/table4.json
    python bench/table4.py --model demo --dataset shapes --samples 2 --repeats 1 --device cpu   # dry run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llava-next-7b")
    ap.add_argument("--dataset", default="sqa")
    ap.add_argument("--split", default=None, help="default: the task's test split")
    ap.add_argument("--k", type=int, default=16, help="VTW's K (the paper's Table 4: 16)")
    ap.add_argument("--fastv-k", type=int, default=2)
    ap.add_argument("--fastv-ratio", type=float, default=0.5, help="fraction of vision tokens dropped")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--attn-implementation", default="sdpa")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="bench/results/table4.json")
    args = ap.parse_args(argv)

    import vtwctl
    from vtwctl import tasks
    from vtwctl.costs import measured_rows
    from vtwctl.env import environment
    from vtwctl.errors import check_k
    from vtwctl.files import atomic_write, dumps

    start = time.perf_counter()
    task = tasks.get(args.dataset)
    samples = list(task.open(args.split or task.test_split, args.data_dir, 0).first(args.samples))
    loaded = vtwctl.load(args.model, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation)
    check_k(args.k, loaded.num_layers)
    per: dict[str, list[dict]] = {}
    for i, s in enumerate(samples):
        inputs = loaded.build_inputs(s.prompt, images=s.images, videos=[s.video] if s.video is not None else None)
        rows, _, tokens = measured_rows(loaded, inputs, [args.k], fastv_k=args.fastv_k, fastv_ratio=args.fastv_ratio,
                                        method="exact", max_new_tokens=args.max_new_tokens, warmup=args.warmup,
                                        repeats=args.repeats, rows=("stock", "fastv", "vtw"))
        for r in rows:
            per.setdefault(r.method, []).append({**r.to_dict(), **tokens, "id": s.id})
        print(f"{time.perf_counter() - start:7.1f} s  sample {i + 1}/{len(samples)}", file=sys.stderr)

    def mean(name: str, key: str) -> float | None:
        vals = [r[key] for r in per[name] if r.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    keys = ("tflops", "prefill_s", "decode_s_per_token", "total_s", "peak_memory_bytes", "kv_cache_bytes",
            "device_memory_used_bytes")
    table = {name: {key: mean(name, key) for key in keys} for name in per}
    for name, row in table.items():
        row["k"] = per[name][0].get("k")
        row["unstable_samples"] = sum(1 for r in per[name] if r.get("spread", {}).get("stable") is False)
        base = table["baseline"]
        row["ratio"] = {key: (row[key] / base[key] if row[key] is not None and base.get(key) else None)
                        for key in ("tflops", "total_s", "peak_memory_bytes", "kv_cache_bytes")}
    res = {"benchmark": "table4", "model": loaded.name, "dataset": args.dataset, "samples": len(samples),
           "k": args.k, "fastv": {"k": args.fastv_k, "ratio": args.fastv_ratio},
           "protocol": {"repeats": args.repeats, "warmup": args.warmup, "max_new_tokens": args.max_new_tokens},
           "table": table, "per_sample": per, "seconds": round(time.perf_counter() - start, 1),
           "env": environment(loaded)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.out), dumps(res, indent=2) + "\n")
    print(dumps({"model": res["model"], "samples": res["samples"], "table": table}, indent=2))
    return res


if __name__ == "__main__":
    main()
