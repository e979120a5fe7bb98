"""bench/gpu.sh: the CPU dry run of the Table 4 script (demo model), and its refusal without a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path, path: str) -> dict:
    return {**os.environ, "OUT": str(tmp_path / "t4.json"), "PATH": path}


def test_gpu_script_dry_run_writes_table4(tmp_path):
    bindir = str(Path(sys.executable).parent)
    res = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                         env=_env(tmp_path, f"{bindir}:{os.environ['PATH']}"), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads((tmp_path / "t4.json").read_text())
    assert d["benchmark"] == "table4" and d["samples"] == 2 and d["model"] == "demo"
    assert set(d["table"]) == {"baseline", "fastv", "vtw"} and d["env"]["versions"]["torch"]
    base, vtw = d["table"]["baseline"], d["table"]["vtw"]
    assert vtw["k"] == 4 and len(d["per_sample"]["vtw"]) == 2
    # VTW at K=4 of 8 layers: fewer FLOPs and a smaller cache than the stock model, on every sample
    for b, v in zip(d["per_sample"]["baseline"], d["per_sample"]["vtw"]):
        assert v["tflops"] < b["tflops"] and v["kv_cache_bytes"] < b["kv_cache_bytes"]
        assert b["decode_s_per_token"] > 0 and v["decode_s_per_token"] > 0
    assert vtw["ratio"]["kv_cache_bytes"] == vtw["kv_cache_bytes"] / base["kv_cache_bytes"]


def test_gpu_script_without_a_gpu_says_so(tmp_path):
    """No nvidia-smi on PATH, or one that fails (no driver, no visible GPU): one line and exit 2, on any host
    (the PATH the script sees is built here, so a GPU machine runs the same check)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dirname").symlink_to(shutil.which("dirname"))
    failing = tmp_path / "failing"
    failing.mkdir()
    smi = failing / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(0o755)
    for path in (str(bindir), f"{failing}:{bindir}"):
        res = subprocess.run([shutil.which("bash"), "bench/gpu.sh"], cwd=ROOT, capture_output=True, text=True,
                             env=_env(tmp_path, path), timeout=60)
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
        assert "no NVIDIA GPU" in res.stderr and "--dry-run" in res.stderr
