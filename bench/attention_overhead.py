"""Overhead of recording beta per token type (vtwctl.attention.record) vs a plain generate, side by side."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from vtwctl.attention import record
from vtwctl.env import environment
from vtwctl.files import dumps  # strict JSON (NaN -> null)


def main(layers: int = 16, hidden: int = 768, new_tokens: int = 16, repeats: int = 3) -> dict:
    from calibrate_speed import llava_shaped, one_image_prompt

    model = llava_shaped(layers, hidden)
    x = one_image_prompt()
    loaded = SimpleNamespace(model=model, vision_token_ids=[32000], num_layers=layers, name="llava-shaped")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def plain():
        with torch.no_grad():
            model.generate(**x, **kw)

    def hooked():
        record(loaded, x, new_tokens)

    plain()
    hooked()
    times = {"plain": [], "hooked": []}
    for _ in range(repeats):
        for name, fn in (("plain", plain), ("hooked", hooked)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    p, h = statistics.median(times["plain"]), statistics.median(times["hooked"])
    return {"benchmark": "attention_overhead", "layers": layers, "hidden": hidden, "new_tokens": new_tokens,
            "plain_s": times["plain"], "hooked_s": times["hooked"], "overhead_ratio": h / p, "env": environment()}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    res = main()
    (Path(__file__).parent / "results" / "attention_overhead.json").write_text(dumps(res, indent=2))
    print(dumps({k: v for k, v in res.items() if k != "env"}, indent=2))
