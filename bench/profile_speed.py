"""Measured cost of VTW and FastV vs the stock model, side by side in one run (CPU).

A LLaVA-shaped random model (hidden 1024, 16 layers, 576 vision + 66 text tokens) goes through the
measurement protocol of ``vtwctl.measure`` for baseline, VTW at K = N/2 and FastV (K=2, R=50 %).
Reported: prefill latency ratio VTW/baseline next to the exact FLOPs ratio (the goal: within 10 %),
decode-per-token ratio, KV-cache bytes ratio, and the same for FastV.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from vtwctl.env import environment
from vtwctl.files import dumps  # strict JSON (NaN -> null)
from vtwctl.flops import Dims, exact_flops
from vtwctl.measure import measure_many


def main(layers: int = 16, hidden: int = 1024, repeats: int = 3, new_tokens: int = 8) -> dict:
    from calibrate_speed import llava_shaped, one_image_prompt

    model = llava_shaped(layers, hidden)
    n_vis, text = 576, 66
    x = one_image_prompt(n_vis, text)
    loaded = SimpleNamespace(model=model, device=torch.device("cpu"))
    k = layers // 2
    dims = Dims.from_config(model.config)
    rows = {}
    plans = [("baseline", None), ("vtw", k), ("fastv", None)]
    for (name, kk), m in zip(plans, measure_many(loaded, x, plans, max_new_tokens=new_tokens, warmup=1,
                                                   repeats=repeats)):
        fl = exact_flops(dims, n_vis, text, k=kk, fastv=(2, 0.5) if name == "fastv" else None,
                         decode_tokens=new_tokens - 1)
        rows[name] = {"prefill_s": m.prefill.median, "prefill_samples": m.prefill.samples,
                      "total_samples": m.total.samples,
                      "decode_s_per_token": m.decode_s_per_token, "total_s": m.total.median,
                      "kv_cache_bytes_prefill": m.kv_cache_bytes_prefill, "kv_cache_bytes_end": m.kv_cache_bytes_end,
                      "prefill_flops": fl.prefill + fl.lm_head, "decode_flops_per_token": fl.decode_per_token,
                      "peak_memory_bytes": m.peak_memory_bytes}  # CPU: torch allocations (measure.CPUPeak)
    b = rows["baseline"]
    out = {"benchmark": "profile_speed",
           "model": {"layers": layers, "hidden": hidden, "vision_tokens": n_vis, "text_tokens": text, "k": k,
                     "fastv": {"k": 2, "ratio": 0.5}, "new_tokens": new_tokens, "repeats": repeats},
           "rows": rows}
    for name in ("vtw", "fastv"):
        r = rows[name]
        flops_ratio = r["prefill_flops"] / b["prefill_flops"]
        lat_ratio = r["prefill_s"] / b["prefill_s"]
        out[name] = {"prefill_latency_ratio": lat_ratio, "prefill_flops_ratio": flops_ratio,
                     "latency_over_flops_ratio": lat_ratio / flops_ratio,
                     "decode_latency_ratio": r["decode_s_per_token"] / b["decode_s_per_token"],
                     "decode_flops_ratio": r["decode_flops_per_token"] / b["decode_flops_per_token"],
                     "kv_bytes_ratio_prefill": r["kv_cache_bytes_prefill"] / b["kv_cache_bytes_prefill"],
                     "kv_bytes_ratio_end": r["kv_cache_bytes_end"] / b["kv_cache_bytes_end"]}
    out["env"] = environment()
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    res = main()
    (Path(__file__).parent / "results" / "profile_speed.json").write_text(dumps(res, indent=2))
    print(dumps({k: v for k, v in res.items() if k in ("vtw", "fastv")}, indent=2))
