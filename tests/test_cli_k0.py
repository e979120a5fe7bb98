"""``--k 0`` with an image through the installed console script (it used to crash with 'KV cache was
filled outside the withdraw() block' in run, profile and attention)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vtwctl.testing import save_tiny_llava


def console_script() -> str:
    exe = Path(sys.executable).with_name("vtwctl")
    return str(exe) if exe.exists() else shutil.which("vtwctl")


def vtwctl(*args, timeout: int = 300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([console_script(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("k0")
    save_tiny_llava(root / "model")
    Image.new("RGB", (48, 40), (255, 0, 0)).save(root / "red.png")
    return root


def test_run_k0_with_an_image(tiny):
    out = vtwctl("run", "--model", tiny / "model", "--image", tiny / "red.png", "--prompt", "what colour is it",
                 "--k", "0", "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["k"] == 0
    # the same answer as the library at K = 0 (no layer sees the image tokens)
    from vtwctl import generate, load

    loaded = load(str(tiny / "model"), device="cpu")
    inputs = loaded.build_inputs("what colour is it", images=[Image.open(tiny / "red.png").convert("RGB")])
    lib = generate(loaded, inputs, k=0, max_new_tokens=4)
    assert d["answer"] == lib.answers[0]


def test_profile_and_attention_k0(tiny):
    out = vtwctl("profile", "--model", tiny / "model", "--k", "0", "--repeats", "1", "--warmup", "0",
                 "--max-new-tokens", "3", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["vtw"]["total_s"] > 0
    res = vtwctl("attention", "--model", tiny / "model", "--samples", "1", "--max-new-tokens", "3", "--k", "0",
                 "--out", tiny / "att", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["by_layer"]
    assert max(r["mean"] for r in rows if r["type"] == "vision") == 0.0  # no layer attends to vision at K = 0
