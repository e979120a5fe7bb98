"""The README's Python API block, verbatim, and the public names it relies on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=env)


def test_readme_python_block_runs_verbatim(tmp_path):
    block = readme_python_block()
    assert "vtwctl.withdraw(" in block and "vtwctl.calibrate(" in block
    # the block as written, then checks against independent paths
    checks = """
tok = m.processor.tokenizer
manual = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
assert manual == gen.answers[0], (manual, gen.answers)
assert gen.k == 6 and 0 < gen.prefill_s <= gen.total_s
below = sorted(int(k) for k, v in cal.kl.items() if v < 0.003)  # Eq. 6 by hand: the first K under eta
assert cal.k_for(0.003) == (below[0] if below else 8)
assert sorted(int(k) for k in cal.kl) == list(range(1, 8))
print("CHECKS-OK")
"""
    res = _run(block + checks, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "CHECKS-OK" in res.stdout and "->" in res.stdout


def test_public_names_are_never_shadowed_by_submodules(tmp_path):
    code = """
import importlib, pkgutil, types
import vtwctl
names = list(vtwctl.__all__)
# import every submodule first (this is what rebinds package attributes to modules)
for info in pkgutil.walk_packages(vtwctl.__path__, "vtwctl."):
    if ".demo.model" in info.name or info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:  # modules of optional extras (vLLM) import their package
        if exc.name.split(".")[0] not in ("vllm", "lmms_eval"):
            raise
bad = [n for n in names if isinstance(getattr(vtwctl, n), types.ModuleType)]
assert not bad, bad
assert callable(vtwctl.withdraw) and callable(vtwctl.calibrate) and callable(vtwctl.evaluate)
import vtwctl.withdraw, vtwctl.calibrate
from vtwctl.calibrate import Calibration
from vtwctl import withdraw
assert callable(vtwctl.withdraw) and withdraw is vtwctl.withdraw and Calibration.__name__ == "Calibration"
assert vtwctl.withdraw.__module__ == "vtwctl.engine.hooks" and vtwctl.calibrate.__module__ == "vtwctl.calibrate"
print("OK")
"""
    res = _run(code, tmp_path)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_import_is_light(tmp_path):
    res = _run("import sys, vtwctl; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))", tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
