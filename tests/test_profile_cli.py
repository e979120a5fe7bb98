"""``vtwctl profile``: the FLOPs-only path without weights, and measured rows on a tiny model."""

from __future__ import annotations

import json

import pytest

from test_cli import tiny_dir, vtwctl  # noqa: F401  (fixture)


def test_flops_only_offline_paper_method():
    out = vtwctl("profile", "--model", "llava-1.5-13b", "--flops-only", "--method", "paper", "--k", "20", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert {"baseline", "vtw", "fastv", "model", "k", "tokens", "method", "env"} <= set(d)
    assert d["k"] == 20 and d["tokens"]["vision"] == 576
    # Eq. 1 by hand: 2 x sum over layers (2 s^2 h + 12 s h^2), 40 layers, h = 5120
    h, v, t = 5120, 576, d["tokens"]["text"]

    def omega(s):
        return 2 * s * s * h + 12 * s * h * h

    base = 2 * 40 * omega(v + t) / 1e12
    vtw = 2 * (20 * omega(v + t) + 20 * omega(t)) / 1e12
    assert d["baseline"]["tflops"] == pytest.approx(base, rel=1e-9)
    assert d["vtw"]["tflops"] == pytest.approx(vtw, rel=1e-9)
    assert d["vtw"]["ratio"] == pytest.approx(vtw / base)


def test_vision_share_table3():
    out = vtwctl("profile", "--model", "video-llava-7b", "--flops-only", "--method", "paper", "--count", "vision",
                 "--k", "16", "--json")
    d = json.loads(out.stdout)
    assert d["vtw"]["ratio"] * 100 == pytest.approx(50.00, abs=0.005)
    assert d["fastv"]["ratio"] * 100 == pytest.approx(53.13, abs=0.0051)  # (2 + 30 / 2) / 32 = 53.125 %


def test_sweep_csv_plot(tmp_path):
    csv, png = tmp_path / "p.csv", tmp_path / "p.png"
    out = vtwctl("profile", "--model", "llava-1.5-7b", "--flops-only", "--k", "8,12,16,20,24", "--csv", csv,
                 "--plot", png, "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    ratios = [r["ratio"] for r in d["sweep"]]
    assert [r["k"] for r in d["sweep"]] == [8, 12, 16, 20, 24] and ratios == sorted(ratios)
    assert len(csv.read_text().strip().splitlines()) == 1 + 1 + 5 + 1
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,message", [
    (["--model", "llava-1.5-7b", "--flops-only", "--k", "40"], "out of range"),
    (["--model", "llava-1.5-7b", "--flops-only", "--method", "counted"], "counted needs the weights"),
    (["--model", "llava-1.5-7b", "--flops-only", "--method", "magic"], "unknown method 'magic'"),
    (["--model", "llava-1.5-7b", "--flops-only", "--flops", "magic"], "--flops must be one of"),
    (["--model", "llava-1.5-7b", "--flops-only", "--flops", "counted"], "counted needs the weights"),
    (["--model", "llava-1.5-7b", "--flops-only", "--method", "vtw,vtw"], "comma list of different rows"),
    (["--model", "llava-1.5-7b", "--flops-only", "--fastv-preset", "x"], "--fastv-preset must be one of"),
    (["--model", "nope-model", "--flops-only"], "unknown model"),
])
def test_bad_input(args, message):
    out = vtwctl("profile", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_measured_rows_on_tiny_model(tiny_dir):  # noqa: F811
    out = vtwctl("profile", "--model", tiny_dir, "--k", "2", "--repeats", "1", "--warmup", "0",
                 "--max-new-tokens", "3", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for row in ("baseline", "vtw", "fastv"):
        for key in ("tflops", "prefill_s", "decode_s_per_token", "total_s", "kv_cache_bytes"):
            assert key in d[row], (row, key)
    # KV bytes by hand: 6 layers x (k, v) x 2 KV heads x 16 dims x 4 bytes per cached position
    per_pos = 2 * 2 * 16 * 4
    s, v = d["tokens"]["text"] + d["tokens"]["vision"], d["tokens"]["vision"]
    assert d["baseline"]["kv_cache_bytes_prefill"] == 6 * per_pos * s
    assert d["vtw"]["kv_cache_bytes_prefill"] == 2 * per_pos * s + 4 * per_pos * (s - v)
    assert d["env"]["device"] == "cpu" and "torch" in d["env"]["versions"]
    # peak memory of a run holds at least the KV cache it ends with (an RSS difference could be < 0)
    for row in ("baseline", "vtw", "fastv"):
        assert d[row]["peak_memory_bytes"] >= d[row]["kv_cache_bytes"] > 0, row
    assert d["fastv_settings"] == {"k": 2, "ratio": 0.5, "preset": "paper"} and d["fastv"]["drop_ratio"] == 0.5
    assert d["source"] == "shapes/test sample 0"


def test_table_2_rows_and_the_authors_flops():
    """Table 2's five rows by calflops' rules at K=16: the printed 8.48 / 4.91 (FastV K=2) reproduce; Rand
    counts as VTW at the same K; VTW† averages VTW over K-8..K+8."""
    from vtwctl.flops import calflops_flops, dims_for

    out = vtwctl("profile", "--model", "llava-1.5-7b", "--flops-only", "--flops", "calflops", "--k", "16",
                 "--method", "stock,fastv,rand,vtw-random,vtw", "--text-tokens", "66", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["rows"] == ["baseline", "fastv", "rand", "vtw-random", "vtw"] and d["flops"] == "calflops"
    assert round(d["baseline"]["tflops"], 2) == 8.48 and round(d["fastv"]["tflops"], 2) == 4.91
    assert d["rand"]["tflops"] == d["vtw"]["tflops"]
    dims = dims_for("llava-1.5-7b")
    mean = sum(calflops_flops(dims, 576, 66, k=k) for k in range(8, 25)) / 17 / 1e12
    assert d["vtw-random"]["tflops"] == pytest.approx(mean)
    authors = vtwctl("profile", "--model", "llava-1.5-7b", "--flops-only", "--flops", "calflops", "--k", "16",
                     "--fastv-preset", "authors", "--text-tokens", "66", "--json")
    assert json.loads(authors.stdout)["fastv"]["k"] == 3
    old = vtwctl("profile", "--model", "llava-1.5-7b", "--flops-only", "--method", "paper", "--json")
    assert old.returncode == 0 and "deprecated" in old.stderr and json.loads(old.stdout)["flops"] == "paper"
