"""Greedy tokens from vLLM for a list of K values in one engine (the tests' and bench's vLLM side).

``python -m vtwctl.serving.probe SPEC.json`` reads ``{"model", "prompts": [{"prompt", "image"}],
"k": [..] or null, "max_tokens", "engine": {LLM kwargs}}`` (``image`` is a PNG path or null; an
optional ``video`` is a ``.npy`` of frames [T, H, W, 3] uint8),
builds one ``vllm.LLM`` in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with ``vtw_k`` set
to the first K through ``hf_overrides``, generates all prompts as one batch, then switches K with
``set_vtw_k`` for the others. ``"k": null`` runs the model as configured (stock vLLM when the
plugin is not loaded). Prints one JSON object: ``{"runs": [{"k", "tokens", "prompt_tokens",
"seconds"}], "model_class"}``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _setdefault_env() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


def run(spec: dict) -> dict:
    _setdefault_env()
    from PIL import Image
    from vllm import LLM, SamplingParams

    ks = spec.get("k")
    engine = dict(spec.get("engine", {}))
    if ks:
        engine["hf_overrides"] = {**engine.get("hf_overrides", {}), "vtw_k": ks[0]}
    llm = LLM(model=spec["model"], **engine)
    requests = []
    for p in spec["prompts"]:
        req = {"prompt": p["prompt"]}
        if p.get("image"):
            req["multi_modal_data"] = {"image": Image.open(p["image"]).convert("RGB")}
        if p.get("video"):
            import numpy as np

            req["multi_modal_data"] = {**req.get("multi_modal_data", {}), "video": np.load(p["video"])}
        requests.append(req)
    params = SamplingParams(temperature=0.0, max_tokens=int(spec.get("max_tokens", 8)), ignore_eos=True)
    classes = llm.apply_model(lambda model: type(model).__qualname__)
    runs = []
    for k in ks or [None]:
        if ks:
            llm.apply_model(lambda model, k=k: model.set_vtw_k(k))
        t0 = time.perf_counter()
        outs = llm.generate(requests, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        stats = llm.apply_model(lambda model: dict(getattr(model, "vtw_stats", {})))
        runs.append({"k": k, "seconds": seconds, "stats": stats[0] if stats else {},
                     "tokens": [list(o.outputs[0].token_ids) for o in outs],
                     "prompt_tokens": [list(o.prompt_token_ids) for o in outs]})
    return {"runs": runs, "model_class": classes[0] if classes else None}


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    result = run(spec)
    sys.stdout.write("VTWPROBE " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
