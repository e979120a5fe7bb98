"""The package layout (engine/, integrations/lmms_eval/, integrations/vllm/, testing/) keeps every old
import path: an old module path is the moved module itself (the same object, whichever path is imported
first), old names are the same objects, and every entry point, old and new, resolves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# old module path -> the module it names now
MOVED = {
    "vtwctl.withdraw": "vtwctl.engine.hooks",
    "vtwctl.plan": "vtwctl.engine.plan",
    "vtwctl.compat": "vtwctl.engine.compat",
    "vtwctl.compiled": "vtwctl.engine.compiled",
    "vtwctl.support": "vtwctl.engine.support",
    "vtwctl.families": "vtwctl.engine.families",
    "vtwctl.policies": "vtwctl.engine.policies",
    "vtwctl.policies.vtw": "vtwctl.engine.policies.vtw",
    "vtwctl.policies.vtw_random": "vtwctl.engine.policies.vtw_random",
    "vtwctl.policies.rand": "vtwctl.engine.policies.rand",
    "vtwctl.policies.fastv": "vtwctl.engine.policies.fastv",
    "vtwctl.lmms_eval_args": "vtwctl.integrations.lmms_eval.args",
    "vtwctl.lmms_eval_model": "vtwctl.integrations.lmms_eval.model",
    "vtwctl.lmms_eval_shapes": "vtwctl.integrations.lmms_eval.shapes",
    "vtwctl.serving.config": "vtwctl.integrations.vllm.config",
    "vtwctl.serving.plan": "vtwctl.integrations.vllm.plan",
    "vtwctl.serving.kv_names": "vtwctl.integrations.vllm.kv_names",
    "vtwctl.serving.probe": "vtwctl.integrations.vllm.probe",
    "vtwctl.serving.fixtures": "vtwctl.testing.checkpoints",
}
# these import vLLM: checked with a stand-in for the new module (tests/test_vllm_serving.py imports them for real)
MOVED_VLLM = {
    "vtwctl.serving.kv": "vtwctl.integrations.vllm.kv",
    "vtwctl.serving.vllm_model": "vtwctl.integrations.vllm.model",
}
# old path, name: the object must be the new module's
NAMES = [
    ("vtwctl.withdraw", "withdraw"), ("vtwctl.withdraw", "apply"), ("vtwctl.withdraw", "active"),
    ("vtwctl.withdraw", "Engine"), ("vtwctl.withdraw", "check_supported"), ("vtwctl.withdraw", "num_layers"),
    ("vtwctl.withdraw", "carries_visual"), ("vtwctl.withdraw", "check_prompt_end"),
    ("vtwctl.compiled", "CompiledDecoder"), ("vtwctl.compiled", "decoder_for"),
    ("vtwctl.families", "adapter_for"), ("vtwctl.families", "vision_mask"),
    ("vtwctl.policies", "Policy"), ("vtwctl.policies", "Tokens"), ("vtwctl.policies.vtw", "VTW"),
    ("vtwctl.policies.fastv", "FastV"), ("vtwctl.policies.rand", "Rand"),
    ("vtwctl.lmms_eval_model", "manifests"), ("vtwctl.lmms_eval_model", "Runner"),
    ("vtwctl.lmms_eval_args", "parse_model_args"), ("vtwctl.lmms_eval_shapes", "process_results"),
    ("vtwctl.serving.fixtures", "save_tiny"), ("vtwctl.serving.fixtures", "save_bench_llava"),
]
# names of the old package vtwctl.serving (a package of its own: it re-exports them)
SERVING = ["ARCHITECTURES", "GUARD_PREFIX", "MODULE", "UNVERIFIED", "WHY_UNVERIFIED", "register", "targets"]


CHECK = f"""
import importlib, sys
moved, names, serving, order = {MOVED!r}, {NAMES!r}, {SERVING!r}, sys.argv[1]
# "old": each old path before its new one, a package before its submodules; "new": the other way round
pairs = list(moved.items()) if order == "old" else list(moved.items())[::-1]
for old, new in pairs:
    first, second = (old, new) if order == "old" else (new, old)
    a = importlib.import_module(first)
    b = importlib.import_module(second)
    assert a is b, (old, new, a, b)
    assert sys.modules[old] is sys.modules[new], (old, new)
for old, name in names:
    new = moved[old]
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name), (old, name)
import vtwctl.serving, vtwctl.integrations.vllm as plugin
for name in serving:
    assert getattr(vtwctl.serving, name) is getattr(plugin, name), name
import vtwctl.cli.evaluate as ev, vtwctl.cli.dataset as ds, vtwctl.cli.merge as mg
assert (ev.run_dataset, ev.render, ev.merge_cmd) == (ds.run_dataset, ds.render, mg.merge_cmd)
import vtwctl, vtwctl.withdraw
from vtwctl.withdraw import withdraw
import vtwctl.engine.hooks
assert vtwctl.withdraw is withdraw is vtwctl.engine.hooks.withdraw  # the package's name stays the function
assert not any(m == "vllm" or m.startswith("vllm.") for m in sys.modules), "vllm imported"
print("OK")
"""


@pytest.mark.parametrize("order", ["old", "new"])
def test_old_module_paths_are_the_moved_modules(order):
    """Importing the old path first, or the new one, gives one module object (no second copy of a class)."""
    res = subprocess.run([sys.executable, "-c", CHECK, order], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_old_vllm_module_paths_name_the_moved_modules():
    """vtwctl.serving.kv and .vllm_model import vLLM; a stand-in for the new module shows where they point."""
    code = f"""
import importlib, sys, types
for old, new in {MOVED_VLLM!r}.items():
    stand_in = sys.modules[new] = types.ModuleType(new)
    assert importlib.import_module(old) is stand_in, old
print("OK")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_the_old_probe_path_runs_the_probe(tmp_path):
    """``python -m vtwctl.serving.probe SPEC`` runs the moved probe's main (here: on a missing spec file)."""
    missing = tmp_path / "missing.json"
    res = subprocess.run([sys.executable, "-m", "vtwctl.serving.probe", str(missing)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0
    assert "FileNotFoundError" in res.stderr and "missing.json" in res.stderr, res.stderr[-3000:]
    assert str(Path("integrations", "vllm", "probe.py")) in res.stderr, res.stderr[-3000:]


def _pyproject_entry_points() -> list[tuple[str, str, str]]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    eps = [("console_scripts", name, value) for name, value in project["scripts"].items()]
    for group, entries in project["entry-points"].items():
        eps += [(group, name, value) for name, value in entries.items()]
    return eps


def test_entry_points_resolve():
    """Every entry point pyproject.toml declares, and every one the installed metadata holds, loads; the old
    values (before the layout) load the same objects."""
    from importlib.metadata import EntryPoint, distribution

    declared = _pyproject_entry_points()
    assert {g for g, _, _ in declared} == {"console_scripts", "vllm.general_plugins", "lmms_eval.models"}
    installed = [(ep.group, ep.name, ep.value) for ep in distribution("vtwctl").entry_points]
    assert sorted(installed) == sorted(declared), "the installed metadata is stale: pip install -e ."
    for group, name, value in declared:
        assert callable(EntryPoint(name, value, group).load()), value
    old = {"vtwctl.serving:register": "vtwctl.integrations.vllm:register",
           "vtwctl.lmms_eval_model:manifests": "vtwctl.integrations.lmms_eval.model:manifests"}
    assert set(old.values()) <= {v for _, _, v in declared}
    for before, now in old.items():
        assert EntryPoint("x", before, "g").load() is EntryPoint("x", now, "g").load()
