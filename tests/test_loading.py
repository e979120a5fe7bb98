"""Spec resolution, profiles and the offline error (no network, no weights)."""

from __future__ import annotations

import pytest

from vtwctl import profiles, records
from vtwctl.errors import VTWError
from vtwctl.loading import load, resolve


def test_short_names_map_to_hub_ids():
    assert resolve("llava-1.5-7b").source == "llava-hf/llava-1.5-7b-hf"
    assert resolve("LLaVA-1.5-13B").source == "llava-hf/llava-1.5-13b-hf"
    assert resolve("llava-hf/llava-1.5-7b-hf").profile["name"] == "llava-1.5-7b"
    assert resolve("liuhaotian/llava-v1.5-7b").profile["name"] == "llava-1.5-7b"
    assert resolve("qwen2-vl-7b").profile["family"] == "qwen2_vl"
    assert resolve("some-org/new-model").profile is None


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-1.5-13b", "llava-next-7b", "llava-next-mistral-7b",
                                  "video-llava-7b", "qwen2-vl-7b", "qwen2.5-vl-7b", "llava-onevision-7b"])
def test_profiles_have_the_documented_fields(name):
    p = profiles.get(name)
    for key in ("hub_id", "family", "text", "vision", "default_eta", "calibrations"):
        assert key in p
    for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
        assert isinstance(p["text"][key], int) and p["text"][key] > 0
    assert p["vision"]["tokens_per_image"] > 0


def test_paper_dimensions():
    p7, p13 = profiles.get("llava-1.5-7b"), profiles.get("llava-1.5-13b")
    assert (p7["text"]["num_layers"], p7["text"]["hidden_size"]) == (32, 4096)
    assert (p13["text"]["num_layers"], p13["text"]["hidden_size"]) == (40, 5120)
    assert p7["vision"]["tokens_per_image"] == 576


def test_unknown_and_missing():
    with pytest.raises(VTWError, match="unknown model"):
        resolve("gpt-17")
    with pytest.raises(VTWError, match="not found"):
        resolve("./no/such/dir")


def test_offline_error_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VTWError, match="model llava-1.5-7b is not in the local cache and the hub cannot be reached"):
        load("llava-1.5-7b", device="cpu")


def test_unreachable_hub_is_not_retried(monkeypatch):
    """Without HF_HUB_OFFLINE, an unreachable hub is detected once, before any download attempt."""
    import socket

    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []
    def refuse(*a, **k):
        calls.append(a)
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    online = []
    real = transformers.AutoConfig.from_pretrained

    def spy(*a, **k):
        if not k.get("local_files_only"):
            online.append(a)
        return real(*a, **{**k, "local_files_only": True})

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    with pytest.raises(VTWError, match="hub cannot be reached"):
        load("some-org/some-model", device="cpu")
    assert len(calls) == 1 and online == []


def test_directory_without_config(tmp_path):
    with pytest.raises(VTWError, match="config.json"):
        resolve(str(tmp_path))


def test_calibration_records_round_trip(tmp_path):
    rec = {"dataset": "sqa", "eta": 0.003, "k": 14, "samples": 20}
    records.save_record("llava-1.5-7b", rec, tmp_path)
    got = records.auto_k("llava-1.5-7b", "sqa", profile_dir=tmp_path)
    assert got["k"] == 14  # the user's record wins over the shipped paper record (K=15)
    assert records.auto_k("llava-1.5-7b", "sqa", profile_dir=tmp_path / "empty")["k"] == 15
    # no pope record: the shipped record for every dataset ("*", the paper's hand-set K=16), as --k auto does
    assert records.auto_k("llava-1.5-7b", "pope", profile_dir=tmp_path / "empty")["dataset"] == "*"
    assert records.auto_k("qwen2-vl-7b", "pope", profile_dir=tmp_path / "empty") is None


@pytest.mark.slow
def test_non_editable_wheel_ships_profiles(tmp_path):
    """A wheel install (not the checkout) finds the shipped profiles."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("vtwctl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vtwctl/data/profiles/llava-1.5-7b.json" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "from vtwctl import profiles; print(profiles.shipped_dir()); print(len(profiles.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    where, count = out.stdout.split()
    assert where.startswith(str(target)) and int(count) >= 8
    # the demo model ships in the wheel and runs offline from the installed copy
    assert "vtwctl/demo/model/model.safetensors" in names
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "vtwctl", "run", "--example", "2", "--k", "4", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    import json

    rec = json.loads(run.stdout)
    assert rec["model"] == "demo" and rec["num_vision_tokens"] == 144 and rec["k"] == 4
    assert rec["num_vision_tokens"] > rec["num_text_tokens"]
