"""Run every table and figure of docs/reproduce.md on the shipped demo model and write the numbers
(``python scripts/reproduce_demo.py [OUT.json]``, default docs/reproduce_demo.json; a few minutes on CPU).

The demo model is a tiny LLaVA trained on the generated "shapes" benchmark (docs/demo.md), so the
numbers show the protocol working end to end, not the paper's values.
"""

from __future__ import annotations

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

    def acc(**kw) -> dict:
        s = evaluate(m, task, kw.pop("k", k), batch_size=16, **kw)
        return {"accuracy": round(s.metrics["accuracy"], 4), "samples": s.samples,
                "mean_latency_ms": round(s.mean_latency_s * 1000, 2)}

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
    paper = vtwctl.load("demo", device="cpu", prompt_style="paper")
    for name, loaded in (("hf", m), ("paper", paper)):
        rep = attention_stats(loaded, pairs, 4, None)
        res[f"attention_{name}"] = {"by_layer": rep.by_layer(), "by_token": rep.by_token()}
    res["seconds"] = round(time.perf_counter() - start, 1)
    res["env"] = environment(m)
    Path(out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {out} in {res['seconds']} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
