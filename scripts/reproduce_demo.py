"""Run every table and figure of docs/reproduce.md on the shipped demo model, write the numbers and
render the page (``python scripts/reproduce_demo.py [OUT.json]``: docs/reproduce_demo.json and
docs/reproduce.md; about ten minutes on 2 CPU cores).

The demo model is a tiny LLaVA trained on the generated "shapes" benchmark (docs/demo.md), so the
numbers show the protocol working end to end, not the paper's values.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path


def main(out: str = "docs/reproduce_demo.json") -> None:
    import torch

    import vtwctl
    from vtwctl import tasks
    from vtwctl.calibrate import calibrate
    from vtwctl.env import environment
    from vtwctl.evaluate import evaluate
    from vtwctl.flops import calflops_flops, dims_for, paper_flops

    torch.manual_seed(0)
    start = time.perf_counter()
    task = tasks.get("shapes")
    m = vtwctl.load("demo", device="cpu")
    n = m.num_layers
    cal = calibrate(m, task, [0.006, 0.005, 0.004, 0.003, 0.002, 0.001], k_min=1, samples=20, seed=0,
                    accuracy=100)
    k = cal.k_for(0.003)
    k = k if k < n else n // 2
    res: dict = {"model": "demo", "num_layers": n, "k": k, "calibration": {
        "eta": {str(e): cal.k_for(e) for e in cal.etas}, "kl": cal.kl, "accuracy": cal.accuracy,
        "baseline_accuracy": cal.baseline_accuracy, "accuracy_samples": cal.accuracy_samples}}

    done: dict = {}

    def acc(**kw) -> dict:  # one evaluation per setting (the stock row appears in three tables)
        key = json.dumps(kw, sort_keys=True)
        if key not in done:
            s = evaluate(m, task, kw.pop("k", k), batch_size=16, **kw)
            done[key] = {"accuracy": round(s.metrics["accuracy"], 4), "samples": s.samples,
                         "mean_latency_ms": round(s.mean_latency_s * 1000, 2)}
            print(f"{time.perf_counter() - start:6.0f} s  {key}: {done[key]['accuracy']}", file=sys.stderr)
        return done[key]

    res["table1"] = {"stock": acc(k=None), "no image": acc(k=None, image_mode="none"),
                     "white image, VTW": acc(image_mode="blank"), "image, VTW": acc()}
    res["table2"] = {"stock": acc(k=None), "fastv": acc(method="fastv", fastv_k=2, fastv_ratio=0.5),
                     "rand": acc(method="rand", seed=0), "vtw-random": acc(method="vtw-random", seed=0),
                     "vtw": acc()}
    res["table6"] = {"stock": acc(k=None), "rearrange": acc(positions="rearrange"), "keep": acc()}
    d = dims_for("demo")
    v, t = 144, 31
    res["flops"] = {"stock": paper_flops(d, v, t), "vtw": paper_flops(d, v, t, k=k),
                    "fastv": paper_flops(d, v, t, fastv=(2, 0.5)), "calflops_stock": calflops_flops(d, v, t),
                    "calflops_vtw": calflops_flops(d, v, t, k=k)}
    from vtwctl.attention import attention_stats

    pairs = [("shapes", s) for s in task.load("test", 20)]
    paper = dataclasses.replace(m, prompt_style="paper")  # the same weights, the authors' template
    for name, loaded in (("hf", m), ("paper", paper)):
        rep = attention_stats(loaded, pairs, 4, None)
        res[f"attention_{name}"] = {"by_layer": rep.by_layer(), "by_token": rep.by_token()}
    from vtwctl.costs import measured_rows

    sample = task.load("test", 1)[0]
    inputs = m.build_inputs(sample.prompt, images=sample.images)
    rows, _, _ = measured_rows(m, inputs, [k], rows=("stock", "fastv", "vtw"), max_new_tokens=16, warmup=1,
                               repeats=5)
    res["table4"] = {r.method: r.to_dict() for r in rows}
    res["table3_flops"] = {"fastv": paper_flops(d, v, t, fastv=(2, 0.5), count="vision") /
                           paper_flops(d, v, t, count="vision"),
                           "vtw": paper_flops(d, v, t, k=k, count="vision") / paper_flops(d, v, t, count="vision")}
    from vtwctl.flops import dims_for as _dims

    d7 = _dims("llava-1.5-7b")
    res["table2_tflops"] = {name: round(calflops_flops(d7, 576, 66, **kw) / 1e12, 2) for name, kw in (
        ("stock", {}), ("fastv", {"fastv": (2, 0.5)}), ("rand", {"k": 16}), ("vtw-random", {"k": 16}),
        ("vtw", {"k": 16}))}
    res["seconds"] = round(time.perf_counter() - start, 1)
    res["env"] = environment(m)
    Path(out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    page = Path(out).with_name("reproduce.md")
    page.write_text(render(res))
    print(f"wrote {out} and {page} in {res['seconds']} s")


# What the paper printed (LLaVA-1.5-7B unless said otherwise), for the page's "paper" column.
PAPER = {
    "table1": {"stock": 1866.10, "no image": 970.89, "white image, VTW": 845.39, "image, VTW": 1872.43},
    "table2": {"stock": (8.48, 55.21, 69.61, 35.60, 64.09, 85.83, 1866.10),
               "fastv": (4.91, 55.14, 68.96, 35.80, 64.26, 82.49, 1864.35),
               "rand": (4.68, 4.40, 9.07, 29.30, 0.52, 82.22, 139.42),
               "vtw-random": (4.68, 55.36, 69.21, 36.10, 55.61, 76.05, 1741.34),
               "vtw": (4.68, 55.44, 69.66, 36.30, 64.00, 85.96, 1872.43)},
    "table5": {0.006: (12, 69.01), 0.005: (13, 69.26), 0.004: (14, 69.46), 0.003: (15, 69.70), 0.002: (15, 69.70),
               0.001: (15, 69.70)},
    "table6": {"stock": (69.61, 35.60, 85.83), "rearrange": (69.56, 35.90, 85.41), "keep": (69.66, 36.30, 85.96)},
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render(res: dict) -> str:
    """docs/reproduce.md from the numbers of one run of this script."""
    k, n = res["k"], res["num_layers"]
    cal = res["calibration"]
    t1, t2, t6 = res["table1"], res["table2"], res["table6"]
    fl = res["flops"]
    env = res.get("env", {})
    env = env if isinstance(env, dict) else {}
    out = [f"""# Reproducing the paper's tables and figures

For every table and figure of the paper (Lin et al., AAAI 2025): the command that reproduces it with a
real model on a GPU, what the shipped demo model gives for it here (a tiny LLaVA, {n} layers, 144 vision
tokens, on the generated "shapes" benchmark: the protocol working end to end, not the paper's values),
and what the paper printed. The demo column is regenerated by `python scripts/reproduce_demo.py`
({res['seconds']:.0f} s on this machine's {env.get('cpu_threads', 2)} CPU threads;
the raw numbers are in docs/reproduce_demo.json). The demo's K is the one calibrated at η = 0.003
(K = {k}); accuracies are on the {t1['stock']['samples']} samples of the shapes test split.

Common options for the paper's setting: `--prompt-style paper` (the authors' LLaVA conversation template,
with its system prompt), `--scoring lmms-eval` (the default: lmms-eval's answer rules), `--dtype float16`
(their runs) and `--attn-implementation sdpa`. `--k 16` as the paper's Table 2 (K set by hand), or
`--k auto` after `vtwctl calibrate`. Every `run --dataset` writes resumable JSONL (`--output`) and
prints the lmms-eval metric; `vtwctl merge` combines shards (docs/cluster.md).

## Table 1: information migration (MME, LLaVA-1.5-7B)

```bash
M="--model llava-1.5-7b --dataset mme --prompt-style paper"
vtwctl run $M --no-withdraw --output t1-stock.jsonl                  # LLaVA-1.5-7B
vtwctl run $M --no-withdraw --image-mode none --output t1-none.jsonl # (a) w/o image
vtwctl run $M --k 16 --image-mode blank --output t1-blank.jsonl      # (b) white image in layers 0..15
vtwctl run $M --k 16 --output t1-vtw.jsonl                           # (c) the image in layers 0..15
```

| setting | paper (MME score) | demo (accuracy) |
|---|---|---|
"""]
    for name, label in (("stock", "stock model"), ("no image", "(a) without image"),
                        ("white image, VTW", "(b) white image, withdrawn at K"),
                        ("image, VTW", "(c) image, withdrawn at K")):
        out.append(f"| {label} | {PAPER['table1'][name]:.2f} | {t1[name]['accuracy']:.3f} |\n")
    out.append(f"""
The demo shows the same pattern: without the image it falls to {t1['no image']['accuracy']:.3f}; with the
image in the first K layers only it stays at {t1['image, VTW']['accuracy']:.3f} (stock {t1['stock']['accuracy']:.3f}).

## Table 2: methods (six benchmarks, three models)

```bash
for d in ai2d sqa mmmu mmbench pope mme; do
  for m in stock fastv rand vtw-random vtw; do
    vtwctl run --model llava-1.5-7b --dataset $d --method $m --k 16 --seed 0 --prompt-style paper \\
        --batch-size 8 --output t2-$d-$m.jsonl --json
  done
done                       # 13B: --model llava-1.5-13b --k 20; NeXT: --model llava-next-7b --k 16
vtwctl profile --model llava-1.5-7b --flops-only --flops calflops --k 16 --method stock,fastv,rand,vtw \\
    --vision-tokens 576 --text-tokens 66   # TFLOPs column (MME's mean input length)
```

`rand` drops as many random input tokens as there are vision tokens at K (seeded per sample); `vtw-random`
is VTW at a K drawn per sample in K−8..K+8 (the paper's VTW†); FastV is K = 2, half the vision tokens
dropped (`--fastv-preset authors` for their file's K = 3).

| method | paper TFLOPs | paper AI2D / SQA / MMMU / MMB / POPE / MME | vtwctl TFLOPs (calflops rules) | demo accuracy |
|---|---|---|---|---|
""")
    tf = res.get("table2_tflops", {})
    for name in ("stock", "fastv", "rand", "vtw-random", "vtw"):
        p = PAPER["table2"][name]
        ours = f"{tf[name]:.2f}" if name in tf else ""
        out.append(f"| {name} | {p[0]:.2f} | {' / '.join(f'{x:.2f}' for x in p[1:])} | {ours} | "
                   f"{t2[name]['accuracy']:.3f} |\n")
    out.append(f"""
TFLOPs: calflops' rules (the authors' counter, which does not see sdpa attention) give 8.48 and FastV 4.91
exactly; for VTW at K = 16 they give 4.60 where the paper printed 4.68; no single count reproduces every
printed number (docs/flops.md has the whole table, 13B and NeXT included). The demo's FLOPs by Eq. 1 at
144 + 31 tokens: stock {fl['stock'] / 1e9:.2f} GFLOPs, VTW (K = {k})
{fl['vtw'] / 1e9:.2f} ({_pct(fl['vtw'] / fl['stock'])} %), FastV {fl['fastv'] / 1e9:.2f}
({_pct(fl['fastv'] / fl['stock'])} %).

## Table 3: video (Video-LLaVA)

```bash
vtwctl run --model video-llava-7b --dataset videomme --no-withdraw --output t3-stock.jsonl
vtwctl run --model video-llava-7b --dataset videomme --method fastv --output t3-fastv.jsonl
vtwctl run --model video-llava-7b --dataset videomme --k 16 --output t3-vtw.jsonl
vtwctl profile --model video-llava-7b --flops-only --flops paper --count vision --k 16 --method stock,fastv,vtw
```

Paper: FLOPs (vision tokens only) 100 % / FastV 53.13 % / VTW 50.00 %; VideoMME 0.30 for all three, TGIF
0.25 / 0.21 / 0.27. vtwctl's `--count vision` gives FastV 53.1 % and VTW 50.0 % for Video-LLaVA at K = 16
(tests/test_flops.py). TGIF is not a vtwctl task (lmms-eval has no TGIF task to score it as it does).
The demo model takes no videos; its vision-token share at its own K: VTW {_pct(res['table3_flops']['vtw'])} %,
FastV {_pct(res['table3_flops']['fastv'])} %.

## Table 4: memory and latency (LLaVA-NeXT-7B, SQA-IMG, one GPU)

```bash
bash bench/gpu.sh llava-next-7b sqa 16       # the first 20 test samples -> bench/results/table4.json
vtwctl profile --model llava-next-7b --dataset sqa --index 0 --k 16 --method stock,fastv,vtw \\
    --repeats 10 --warmup 2 --attn-implementation sdpa --dtype float16 --json > t4.json   # one sample
```

Paper (RTX 3090): peak per-sample memory 3.1 / 3.1 / 2.0 GB (VTW 0.65×), TFLOPs 22.9 / 12.9 / 12.3,
latency per example 0.52 / 0.40 / 0.33 s (VTW 0.63×). Measured on the demo model here (CPU, median of
5 after 1 warm-up, 16 new tokens, one shapes test sample):

| method | prefill (ms) | decode (ms/token) | total (ms) | KV cache (KB) | peak memory (MB) |
|---|---|---|---|---|---|
""")
    for name, row in res["table4"].items():
        def ms(x):
            return f"{1000 * x:.1f}" if x is not None else "–"
        kv = row.get("kv_cache_bytes")
        peak = row.get("peak_memory_bytes")
        out.append(f"| {name} | {ms(row.get('prefill_s'))} | {ms(row.get('decode_s_per_token'))} | "
                   f"{ms(row.get('total_s'))} | {kv / 1024 if kv else 0:.0f} | "
                   f"{peak / 2**20 if peak else 0:.1f} |\n")
    t4 = res["table4"]
    saved = _pct(1 - t4["vtw"]["kv_cache_bytes"] / t4["baseline"]["kv_cache_bytes"])
    out.append(f"""
CPU timings of a 5M-parameter model say little about a GPU: at K = {k} of {n} only {n - k} layer(s) run
text-only, so the KV cache shrinks by {saved} %, and on a model
this small per-call costs (the vision tower, the hooks) outweigh the saved work. The ratios that
carry over (KV bytes of layers ≥ K, prefill FLOPs) are measured at scale in docs/performance.md; the
wall-clock ratios of Table 4 need the GPU run above.

## Table 5 and Fig. 8: the threshold η and K (LLaVA-1.5-7B, SQA-IMG)

```bash
vtwctl calibrate --model llava-1.5-7b --dataset sqa --eta 0.006,0.005,0.004,0.003,0.002,0.001 \\
    --samples 20 --accuracy 200 --plot fig8b-kl.png --prompt-style paper --json > t5.json
# the authors' protocol instead: the first 20 documents of the test split
vtwctl calibrate --model llava-1.5-7b --dataset sqa --split test --first 20 --eta 0.003 --prompt-style paper
vtwctl run --model llava-1.5-7b --dataset sqa --k K --prompt-style paper --output t5-K.jsonl   # per chosen K
```

`--accuracy N` scores N samples at every K (Fig. 8a); the KL curve is Fig. 8b. Paper K / accuracy per η,
then the demo's K (one sweep, 20 calibration samples, K from 1; {n} = no K qualifies, no withdrawal):

| η | paper K | paper accuracy | demo K |
|---|---|---|---|
""")
    for eta, (pk, pa) in PAPER["table5"].items():
        out.append(f"| {eta} | {pk} | {pa:.2f} | {cal['eta'][str(eta)]} |\n")
    out.append(f"""
Demo KL (mean over 20 samples) and accuracy ({cal['accuracy_samples']} validation samples) per K; stock accuracy
{cal['baseline_accuracy']:.3f}:

| K | {' | '.join(cal['kl'])} |
|---|{'---|' * len(cal['kl'])}
| KL | {' | '.join(f'{v:.2g}' for v in cal['kl'].values())} |
| accuracy | {' | '.join(f"{(cal['accuracy'] or {}).get(key, float('nan')):.3f}" for key in cal['kl'])} |

## Table 6: positions after the withdrawal

```bash
for p in keep rearrange; do
  vtwctl run --model llava-1.5-7b --dataset sqa --k 16 --positions $p --prompt-style paper --output t6-$p.jsonl
done                                                        # and --dataset mmmu, pope
```

| setting | paper SQA / MMMU / POPE | demo accuracy |
|---|---|---|
""")
    for name in ("stock", "rearrange", "keep"):
        p = PAPER["table6"][name]
        out.append(f"| {name} | {' / '.join(f'{x:.2f}' for x in p)} | {t6[name]['accuracy']:.3f} |\n")
    out.append("""
## Figs. 4 and 5: attention per token type

```bash
vtwctl attention --model llava-1.5-7b --dataset ai2d,mmmu,mme,pope --samples 100 --prompt-style paper --out fig4/
vtwctl attention --model llava-1.5-7b --dataset ai2d,mmmu,mme,pope --samples 20 --prompt-style paper --out fig5/
```

Fig. 4 is `attention_by_layer.png` (β per layer, averaged over heads and output tokens), Fig. 5
`attention_by_token.png` (per output token, averaged over heads and layers). The paper: past the first
layers, 80 % or more of the attention goes to the 35 system tokens and about 5 % to the 576 vision tokens.
The system segment exists only with the paper's prompt style (the checkpoint's own chat template has no
system prompt). Demo, 20 test samples, β averaged over the layers from 2 on (the demo model was
never trained with a system prompt, so its small share says nothing about the paper's finding; that
needs a real LLaVA-1.5 on a GPU):

| prompt style | system | vision | instruction | output |
|---|---|---|---|---|
""")
    for name in ("hf", "paper"):
        rows = [r for r in res[f"attention_{name}"]["by_layer"] if r["layer"] >= 2]
        means = {t: sum(r["mean"] for r in rows if r["type"] == t) / max(1, sum(r["type"] == t for r in rows))
                 for t in ("system", "vision", "instruction", "output")}
        out.append(f"| {name} | {' | '.join(f'{means[t]:.3f}' for t in means)} |\n")
    out.append(f"""
## Fig. 6: the chatbot, side by side

```bash
vtwctl run --model llava-1.5-7b --image photo.jpg --prompt "Describe the image." --k 16 --compare --prompt-style paper
vtwctl run --example 2 --k {k} --compare          # the demo model: both answers, tokens, timings, KV bytes
```

## What is not reproduced here

Fig. 7 (LISA segmentation) needs LISA, which is not a stock transformers model. The paper's numbers need
the real checkpoints and datasets on a GPU: the commands above are tested on the demo model and on tiny
models of each family (tests/test_paper_protocol.py); on a real LLaVA they have not been run in this
repository's CI (no GPU, no downloads).
""")
    return "".join(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
