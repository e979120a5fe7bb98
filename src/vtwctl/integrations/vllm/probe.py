"""Greedy tokens from vLLM for one K in one engine (the tests' and bench's vLLM side).

``python -m vtwctl.integrations.vllm.probe SPEC.json`` reads ``{"model", "prompts": [{"prompt", "image"}],
"k": K or null, "max_tokens", "engine": {LLM kwargs}}`` (``image`` is a PNG path or null; an
optional ``video`` is a ``.npy`` of frames [T, H, W, 3] uint8), builds one ``vllm.LLM`` in this
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set) with ``vtw_k`` = K through
``hf_overrides`` and vtwctl's scheduler, and generates all prompts as one batch (``"k": null``
runs the model as configured: stock vLLM when the plugin is not loaded). Prints one line
``VTWPROBE {json}``: ``{"runs": [{"k", "tokens", "prompt_tokens", "seconds", "stats"}],
"model_class", "kv": {"groups", "num_blocks", "max_concurrency"}}``.
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

    from .kv_names import SCHEDULER

    k = spec.get("k")
    if isinstance(k, list):  # one engine, one K
        (k,) = k
    engine = dict(spec.get("engine", {}))
    if k is not None:
        engine["hf_overrides"] = {**engine.get("hf_overrides", {}), "vtw_k": k}
        engine.setdefault("scheduler_cls", SCHEDULER)
    if spec.get("record_blocks"):
        engine["async_scheduling"] = False  # blocks read between steps are the ones of the step just run
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
    classes = llm.apply_model(_class_name)
    t0 = time.perf_counter()
    outs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    stats = llm.apply_model(_stats)
    runs = [{"k": k, "seconds": seconds, "stats": stats[0] if stats else {},
             "tokens": [list(o.outputs[0].token_ids) for o in outs],
             "prompt_tokens": [list(o.prompt_token_ids) for o in outs]}]
    out = {"runs": runs, "model_class": classes[0] if classes else None, "kv": _kv_summary(llm)}
    if spec.get("record_blocks"):
        out["blocks"] = _record_blocks(llm, requests, params)
    return out


def _record_blocks(llm, requests: list, params) -> list[dict]:
    """Per prompt, its KV blocks per group (by spec type) right after the step that finished its prefill."""
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    for i, request in enumerate(requests):
        engine.add_request(f"blocks-{i}-", request, params)
    seen: dict[int, dict] = {}
    while engine.has_unfinished_requests():
        engine.step()
        for rid, req in scheduler.requests.items():
            index = int(rid.split("-")[1])
            if index in seen or req.num_computed_tokens < req.num_prompt_tokens:
                continue
            groups = scheduler.kv_cache_manager.coordinator.single_type_managers
            counts: dict[str, set] = {}
            for manager, blocks in zip(groups, scheduler.kv_cache_manager.coordinator.get_blocks(rid)):
                counts.setdefault(type(manager.kv_cache_spec).__name__, set()).add(len(blocks))
            seen[index] = {"prompt_tokens": req.num_prompt_tokens, "computed": req.num_computed_tokens,
                           "blocks": {name: c.pop() if len(c) == 1 else sorted(c) for name, c in counts.items()}}
    return [seen[i] for i in sorted(seen)]


def _class_name(model) -> str:  # module-level: tensor-parallel workers get it pickled by name
    return type(model).__qualname__


def _stats(model) -> dict:
    return dict(getattr(model, "vtw_stats", {}))


def _kv_summary(llm) -> dict:
    """The engine's KV-cache groups (spec type and layer count), blocks and vLLM's maximum concurrency."""
    try:
        from vllm.v1.core.kv_cache_utils import get_max_concurrency_for_kv_cache_config

        core = llm.llm_engine.engine_core.engine_core
        config = core.scheduler.kv_cache_config
        groups = [{"spec": type(g.kv_cache_spec).__name__, "layers": len(g.layer_names)}
                  for g in config.kv_cache_groups]
        return {"groups": groups, "num_blocks": config.num_blocks,
                "max_concurrency": get_max_concurrency_for_kv_cache_config(core.vllm_config, config),
                "preemptions": getattr(core.scheduler, "vtw_preemptions", None)}
    except Exception as exc:  # noqa: BLE001 - a multiprocess engine has no local scheduler to read
        return {"error": repr(exc)}


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    result = run(spec)
    sys.stdout.write("VTWPROBE " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
