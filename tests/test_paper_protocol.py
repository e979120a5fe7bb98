"""The paper's protocol through the console script: --compare (Fig. 6), Table 2's rows in run --dataset,
the authors' calibration data and prompt (issue: reproduce the paper's protocol)."""

from __future__ import annotations

import json

import pytest

from console import script
from vtwctl.evaluate import read_records


@pytest.mark.slow  # over 30 s: in CI's slow step (-m slow)
def test_compare_halves_equal_two_separate_runs():
    both = script("run", "--example", "2", "--k", "4", "--compare", "--json")
    assert both.returncode == 0, both.stderr[-2000:]
    d = json.loads(both.stdout)
    stock = json.loads(script("run", "--example", "2", "--no-withdraw", "--json").stdout)
    vtw = json.loads(script("run", "--example", "2", "--k", "4", "--json").stdout)
    for half, alone in ((d["stock"], stock), (d["vtw"], vtw)):
        assert (half["answer"], half["new_tokens"], half["k"]) == (alone["answer"], alone["new_tokens"], alone["k"])
    assert d["stock"]["method"] == "stock" and d["vtw"]["method"] == "vtw" and d["vtw"]["k"] == 4
    assert d["vtw"]["kv_bytes"] < d["stock"]["kv_bytes"]
    table = script("run", "--example", "2", "--k", "4", "--compare")
    assert table.returncode == 0 and "stock vs VTW at K=4" in table.stderr and "KV cache" in table.stderr
    bad = script("run", "--example", "2", "--k", "4", "--compare", "--method", "rand")
    assert bad.returncode == 2 and "--compare" in bad.stderr


@pytest.mark.slow  # over 30 s: in CI's slow step (-m slow)
def test_table_2_rows_in_a_benchmark_run(tmp_path):
    out = {m: tmp_path / f"{m}.jsonl" for m in ("rand", "vtw-random", "fastv")}
    for m, path in out.items():
        res = script("run", "--dataset", "shapes", "--limit", "6", "--k", "4", "--method", m, "--seed", "3",
                     "--output", path, "--json")
        assert res.returncode == 0, res.stderr[-2000:]
        summary = json.loads(res.stdout)
        assert summary["method"] == m and summary["samples"] == 6
    rand = read_records(out["rand"])
    assert {r["method"] for r in rand} == {"rand"} and {r["seed"] for r in rand} == {3} and rand[0]["k"] == 4
    drawn = [r["k_drawn"] for r in read_records(out["vtw-random"])]
    assert all(0 <= k <= 8 for k in drawn) and len(set(drawn)) > 1  # K drawn per sample in K-8..K+8 (N = 8)
    fastv = read_records(out["fastv"])
    assert {(r["k"], r["fastv_ratio"]) for r in fastv} == {(2, 0.5)}
    again = script("run", "--dataset", "shapes", "--limit", "6", "--k", "4", "--method", "vtw-random", "--seed", "3",
                   "--output", out["vtw-random"], "--json")
    assert json.loads(again.stdout)["new_samples"] == 0  # a resume draws the same run: nothing to redo
    other = script("run", "--dataset", "shapes", "--limit", "6", "--k", "4", "--method", "rand", "--seed", "4",
                   "--output", out["rand"])
    assert other.returncode == 2 and "seed=3 (now 4)" in other.stderr


def test_the_authors_calibration_data_and_prompt(tmp_path):
    refused = script("calibrate", "--split", "test", "--no-save")
    assert refused.returncode == 2 and "--split test --first N" in refused.stderr
    res = script("calibrate", "--split", "test", "--first", "5", "--k-min", "3", "--prompt-style", "paper",
                 "--batch-size", "3", "--profile-dir", tmp_path, "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    d = json.loads(res.stdout)
    assert d["selection"] == "first" and "test split" in d["warning"] and "warning:" in res.stderr
    assert d["samples"] == 5 and d["sample_ids"] == [f"shapes-test-0-{i:06d}" for i in range(5)]
    assert d["env"]["prompt_style"] == "paper"
    record = json.loads((tmp_path / "demo.json").read_text())["calibrations"][-1]
    assert record["selection"] == "first" and record["warning"] and record["prompt_style"] == "paper"
    assert record["dtype"] == "float32"
