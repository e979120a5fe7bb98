"""vLLM stock vs vLLM with VTW: prefill and decode throughput on the CPU bench model, side by side.

One in-process vLLM engine (CPU backend, eager; ``--compile``: vLLM's default compile mode) on the
shipped demo LLaVA (8 layers, 144 vision tokens per 96x96 image); the plugin's class runs vLLM's
own forward when K is off ("stock") and VTW at layer K otherwise, switched between requests with
``set_vtw_k``. Protocol: a warm-up of each variant, then ``--repeats`` interleaved rounds; in each
round every variant generates a batch of ``--batch`` demo questions with ``max_tokens=1``
(prefill) and with ``max_tokens=1+--decode`` (``ignore_eos``); decode time is the difference.
Reported: medians and raw samples, tokens/s, and ratios to stock measured in the same run.
Needs the vLLM venv (``nox -s vllm``; docs/serving.md).

    python bench/vllm_vtw.py --k 2,6 --batch 4 --decode 32 --repeats 5 --out bench/results/vllm_vtw.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", default="2,6", help="comma-separated K values (the demo's calibrated K is 6)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--decode", type=int, default=32, help="decode tokens per request")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="vLLM's default compile mode, not enforce_eager (VTW steps run their layers eagerly)")
    ap.add_argument("--out", default="bench/results/vllm_vtw.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

    import torch
    import vllm
    from vllm import LLM, SamplingParams

    from vtwctl.demo import MODEL_DIR, shapes

    torch.set_num_threads(args.threads)
    ks = [int(x) for x in args.k.split(",")]
    llm = LLM(model=str(MODEL_DIR), dtype="float32", max_model_len=512, enforce_eager=not args.compile,
              enable_prefix_caching=False, max_num_seqs=args.batch, limit_mm_per_prompt={"image": 1},
              hf_overrides={"vtw_k": ks[0]})
    samples = [shapes.make_sample("test", i) for i in range(args.batch)]
    requests = [{"prompt": f"USER: <image>\n{s['question']} ASSISTANT:", "multi_modal_data": {"image": s["image"]}}
                for s in samples]

    def timed(k, max_tokens):
        llm.apply_model(lambda model, k=k: model.set_vtw_k(k))
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(requests, params, use_tqdm=False)
        return time.perf_counter() - t0, outs

    variants = [None, *ks]
    raw = {str(v): {"prefill_s": [], "full_s": []} for v in variants}
    for v in variants:  # warm-up, and the prompt length
        _, outs = timed(v, 1)
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outs)
    for _ in range(args.repeats):
        for v in variants:
            raw[str(v)]["prefill_s"].append(timed(v, 1)[0])
            raw[str(v)]["full_s"].append(timed(v, 1 + args.decode)[0])
    rows = {}
    for v in variants:
        pre = statistics.median(raw[str(v)]["prefill_s"])
        full = statistics.median(raw[str(v)]["full_s"])
        dec = max(full - pre, 1e-9)
        rows[str(v)] = {"k": v, "prefill_s": pre, "decode_s": dec, "total_s": full,
                        "prefill_tok_s": prompt_tokens / pre, "decode_tok_s": args.batch * args.decode / dec,
                        "raw": raw[str(v)]}
    base = rows["None"]
    for row in rows.values():
        row["prefill_speedup"] = base["prefill_s"] / row["prefill_s"]
        row["decode_speedup"] = base["decode_s"] / row["decode_s"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    report = {
        "schema": 1, "bench": "vllm_vtw", "model": "demo", "num_layers": 8, "vision_tokens_per_image": 144,
        "batch": args.batch, "decode_tokens": args.decode, "repeats": args.repeats, "prompt_tokens": prompt_tokens,
        "rows": list(rows.values()),
        "env": {"vllm": vllm.__version__, "torch": torch.__version__, "threads": args.threads,
                "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "mode": "compile" if args.compile else "enforce_eager"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'K':>6} {'prefill s':>10} {'prefill tok/s':>14} {'x':>6} {'decode s':>9} {'decode tok/s':>13} {'x':>6}",
          file=sys.stderr)
    for row in rows.values():
        print(f"{str(row['k'] if row['k'] is not None else 'stock'):>6} {row['prefill_s']:10.3f} "
              f"{row['prefill_tok_s']:14.1f} {row['prefill_speedup']:6.2f} {row['decode_s']:9.3f} "
              f"{row['decode_tok_s']:13.1f} {row['decode_speedup']:6.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
