"""The engine's own cost per decode step: time spent inside VTW's hooks (planning, gathering, masks,
scatter) as a fraction of a stock decode step, at batch 1 on the bench model (CPU).

A subclass of ``vtwctl.engine.hooks.Engine`` times each hook method (wall clock around the Python call;
the hooks launch only small index ops). Decode steps are the generate calls' steps after the first
token; the prefill's planning is reported apart. Target: <= 3 % of a stock decode step.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))

from calibrate_speed import llava_shaped, one_image_prompt  # noqa: E402

from vtwctl.engine.hooks import Engine, active  # noqa: E402
from vtwctl.env import environment  # noqa: E402
from vtwctl.measure import measure_many  # noqa: E402

HOOKS = ("_on_call", "_on_layer", "_on_layer_out", "_on_text_out", "_on_call_end")


def _timed(name: str):
    def method(self, *a, **k):
        t = time.perf_counter()
        try:
            return getattr(Engine, name)(self, *a, **k)
        finally:
            self.spent += time.perf_counter() - t
            if name == "_on_call_end":  # one forward call done: its hook time
                self.per_call.append(self.spent)
                self.spent = 0.0
    return method


class TimedEngine(Engine):
    """The engine with a stopwatch around each hook method."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.spent = 0.0
        self.per_call: list[float] = []


for _name in HOOKS:
    setattr(TimedEngine, _name, _timed(_name))


def main(layers: int = 16, hidden: int = 1024, new_tokens: int = 16, repeats: int = 3) -> dict:
    model = llava_shaped(layers, hidden)
    n_vis, text = 576, 66
    x = one_image_prompt(n_vis, text)
    k = layers // 2
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    prefill_hooks, decode_hooks = [], []
    with torch.inference_mode():
        for r in range(repeats + 1):
            engine = TimedEngine(model, k, "keep")
            with active(model, engine):
                model.generate(**x, **gen)
            if r:  # the first is a warm-up
                prefill_hooks.append(engine.per_call[0])
                decode_hooks += engine.per_call[1:]
    stock = measure_many(SimpleNamespace(model=model, device=torch.device("cpu")), x, [("baseline", None), ("vtw", k)],
                         max_new_tokens=new_tokens, warmup=1, repeats=repeats)
    hook_step = statistics.median(decode_hooks)
    res = {"benchmark": "engine_overhead",
           "model": {"layers": layers, "hidden": hidden, "k": k, "vision_tokens": n_vis, "text_tokens": text,
                     "new_tokens": new_tokens, "repeats": repeats},
           "hooks_per_decode_step_s": hook_step, "hooks_per_decode_step_p90_s": sorted(decode_hooks)[
               int(0.9 * (len(decode_hooks) - 1))],
           "hooks_per_prefill_s": statistics.median(prefill_hooks),
           "stock_decode_step_s": stock[0].decode_s_per_token, "vtw_decode_step_s": stock[1].decode_s_per_token,
           "stock_prefill_s": stock[0].prefill.median,
           "overhead_of_stock_decode_step": hook_step / stock[0].decode_s_per_token,
           "prefill_overhead_of_stock_prefill": statistics.median(prefill_hooks) / stock[0].prefill.median,
           "env": environment()}
    return res


if __name__ == "__main__":
    from vtwctl.files import dumps

    result = main()
    (Path(__file__).parent / "results" / "engine_overhead.json").write_text(dumps(result, indent=2) + "\n")
    print(dumps({k: v for k, v in result.items() if k != "env"}, indent=2))
