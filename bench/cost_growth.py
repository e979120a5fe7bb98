"""How VTW's saving grows with the work: more vision tokens, a video, bigger padded batches (CPU).

For each workload the stock model and VTW at K = N/2 go through vtwctl's measurement protocol side by
side (``vtwctl.measure``: interleaved repeats, decode timed step by step). Reported per workload:
prefill latency ratio VTW/stock next to the exact FLOPs ratio of the padded batch (the goal: within
10 %), decode time per token ratio next to the bytes-moved ratio (language-model weights + the KV cache
read per step; VTW shrinks only the KV part), KV bytes and peak memory ratios.

Workloads: 576, 1,152 and 2,880 vision tokens (1, 2 and 5 images of 576: LLaVA-1.5, two images, an
AnyRes-sized LLaVA-NeXT input), a video of 8 frames of 256 tokens (Video-LLaVA-sized), and batches of
4 and 16 rows of 576 + 66 tokens where every other row is text-only (left padding).
``python bench/cost_growth.py`` writes bench/results/cost_growth.json and docs/performance_growth.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))

from calibrate_speed import batch_inputs, llava_shaped  # noqa: E402

from vtwctl.env import environment  # noqa: E402
from vtwctl.flops import Dims, exact_flops  # noqa: E402
from vtwctl.measure import measure_many  # noqa: E402

TEXT = 66


def main(layers: int = 8, hidden: int = 512, repeats: int = 3, new_tokens: int = 8, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    models = {336: llava_shaped(layers, hidden, image=336), 224: llava_shaped(layers, hidden, image=224)}
    k = layers // 2
    dims = Dims.from_config(models[336].config)
    weights = sum(p.numel() * p.element_size() for p in models[336].model.language_model.parameters())
    work = [("576 vision tokens", [1], 336, 576), ("1,152 (2 images)", [2], 336, 576),
            ("2,880 (5 images, AnyRes-sized)", [5], 336, 576), ("video: 8 frames x 256", [8], 224, 256),
            ("batch 4, half text-only", [1, 0] * 2, 336, 576), ("batch 16, half text-only", [1, 0] * 8, 336, 576)]
    out = []
    for name, rows, image, per_image in work:
        model = models[image]
        x = batch_inputs(rows, per_image, image)
        loaded = SimpleNamespace(model=model, device=torch.device("cpu"))
        base, vtw = measure_many(loaded, x, [("baseline", None), ("vtw", k)], max_new_tokens=new_tokens, warmup=1,
                                 repeats=repeats)
        vision = max(rows) * per_image
        fb = exact_flops(dims, vision, TEXT, batch=len(rows))
        fv = exact_flops(dims, vision, TEXT, k=k, batch=len(rows))
        kv_b, kv_v = base.kv_cache_bytes_end, vtw.kv_cache_bytes_end
        row = {"workload": name, "batch": len(rows), "vision_tokens_per_row": vision,
               "prefill_latency_ratio": vtw.prefill.median / base.prefill.median,
               "prefill_flops_ratio": fv.prefill / fb.prefill,
               "decode_latency_ratio": vtw.decode_s_per_token / base.decode_s_per_token,
               "decode_bytes_ratio": (weights + kv_v) / (weights + kv_b),
               "kv_bytes_ratio": kv_v / kv_b,
               "peak_memory_ratio": (vtw.peak_memory_bytes / base.peak_memory_bytes
                                     if base.peak_memory_bytes else None),
               "stable": base.stable and vtw.stable,
               "stock": {"prefill_s": base.prefill.median, "prefill_spread": [base.prefill.p10, base.prefill.p90],
                         "decode_s_per_token": base.decode_s_per_token, "kv_bytes": kv_b,
                         "peak_memory_bytes": base.peak_memory_bytes},
               "vtw": {"prefill_s": vtw.prefill.median, "prefill_spread": [vtw.prefill.p10, vtw.prefill.p90],
                       "decode_s_per_token": vtw.decode_s_per_token, "kv_bytes": kv_v,
                       "peak_memory_bytes": vtw.peak_memory_bytes}}
        row["latency_over_flops"] = row["prefill_latency_ratio"] / row["prefill_flops_ratio"]
        out.append(row)
        print(f"{time.perf_counter() - start:6.0f} s  {name}: prefill {row['prefill_latency_ratio']:.3f} "
              f"(FLOPs {row['prefill_flops_ratio']:.3f}), decode {row['decode_latency_ratio']:.3f} "
              f"(bytes {row['decode_bytes_ratio']:.3f})", file=sys.stderr)
    res = {"benchmark": "cost_growth",
           "model": {"layers": layers, "hidden": hidden, "k": k, "new_tokens": new_tokens, "repeats": repeats,
                     "language_model_weight_bytes": weights},
           "rows": out, "seconds": round(time.perf_counter() - start, 1),
           "env": environment()}
    plot(res, Path(__file__).parents[1] / "docs" / "performance_growth.png")
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    names = [r["workload"] for r in rows]
    xs = range(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    a.plot(xs, [r["prefill_latency_ratio"] for r in rows], "o-", label="measured prefill latency")
    a.plot(xs, [r["prefill_flops_ratio"] for r in rows], "s--", label="exact FLOPs")
    a.set_title("prefill: VTW / stock")
    b.plot(xs, [r["decode_latency_ratio"] for r in rows], "o-", label="measured decode time per token")
    b.plot(xs, [r["decode_bytes_ratio"] for r in rows], "s--", label="bytes moved (weights + KV)")
    b.plot(xs, [r["kv_bytes_ratio"] for r in rows], "^:", label="KV bytes")
    b.set_title("decode: VTW / stock")
    for ax in (a, b):
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_ylabel(f"ratio (K = {res['model']['k']} of {res['model']['layers']} layers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from vtwctl.files import dumps

    result = main(threads=int(sys.argv[1]) if len(sys.argv) > 1 else None)
    target = Path(__file__).parent / "results" / "cost_growth.json"
    target.write_text(dumps(result, indent=2) + "\n")
    print(dumps({k: v for k, v in result.items() if k != "env"}, indent=2))
