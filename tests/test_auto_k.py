"""One ``--k auto`` rule for every command: the user's newest matching record, then the shipped ones;
the command says which record it used; ``vtwctl models`` shows the user's records."""

from __future__ import annotations

import json

from console import batch, script
from shipped import demo_k
from vtwctl import records


def _store(tmp_path, model, recs):
    for r in recs:
        records.save_record(model, r, tmp_path)
    return tmp_path / f"{model}.json"


def test_one_resolver(tmp_path):
    # shipped llava-1.5-7b: sqa records (paper Table 5, K=15 at its default eta 0.003) and "*" (K=16)
    assert records.auto_k("llava-1.5-7b", None, tmp_path)["k"] == 16
    assert records.auto_k("llava-1.5-7b", "sqa", tmp_path)["k"] == 15
    assert records.auto_k("llava-1.5-7b", "pope", tmp_path)["k"] == 16
    path = _store(tmp_path, "llava-1.5-7b", [{"dataset": "pope", "eta": 0.003, "k": 9, "date": "1"},
                                            {"dataset": "sqa", "eta": 0.003, "k": 11, "date": "2"}])
    # the user's fresh calibration wins over the shipped "*" record for a single prompt (it did not)
    rec = records.auto_k("llava-1.5-7b", None, tmp_path)
    assert rec["k"] == 11 and rec["origin"] == str(path)
    assert records.auto_k("llava-1.5-7b", "pope", tmp_path)["k"] == 9
    assert records.auto_k("llava-1.5-7b", "mme", tmp_path)["k"] == 16  # no user record for mme: shipped "*"
    assert records.auto_k("llava-1.5-7b", "mme", tmp_path)["origin"] == "shipped profile llava-1.5-7b"
    assert records.auto_k("some/model", None, tmp_path) is None


def test_commands_share_the_rule_and_say_which_record(tmp_path):
    path = _store(tmp_path, "demo", [{"dataset": "shapes", "eta": 0.005, "k": 3, "samples": 8, "date": "2026-01-02"},
                                     {"dataset": "sqa", "eta": 0.003, "k": 5, "date": "2026-01-03"}])
    res = script("run", "--example", "2", "--k", "auto", "--max-new-tokens", "2", "--profile-dir", tmp_path, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["k"] == 3 and out["k_record"]["origin"] == str(path) and out["k_record"]["dataset"] == "shapes"
    assert f"K=3 from the calibration record of demo (dataset shapes, η=0.005, 8 samples, 2026-01-02; {path})" \
        in res.stderr
    flops, models = batch([["profile", "--model", "demo", "--flops-only", "--k", "auto", "--profile-dir", tmp_path,
                            "--json"],
                           ["models", "--profile-dir", tmp_path, "--json"]])
    assert flops.returncode == 0 and json.loads(flops.stdout)["k"] == 5  # no dataset: the newest record
    assert "K=5 from the calibration record of demo (dataset sqa" in flops.stderr
    demo = next(p for p in json.loads(models.stdout) if p["name"] == "demo")
    assert [(r["dataset"], r["k"]) for r in demo["user_calibrations"]] == [("shapes", 3), ("sqa", 5)]


def test_models_lists_the_users_records(tmp_path):
    _store(tmp_path, "demo", [{"dataset": "shapes", "eta": 0.005, "k": 3}])
    _store(tmp_path, "/data/my-llava", [{"dataset": "pope", "eta": 0.003, "k": 12}])
    res = script("models", "--profile-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if "│ demo" in line)
    assert f"{demo_k()} (shapes, η=0.003)" in row and "3 (shapes, η=0.005)" in row  # shipped, then yours
    assert "/data/my-llava" in res.stdout and "12 (pope, η=0.003)" in res.stdout
