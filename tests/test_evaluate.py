"""``run --dataset``: records, resume after an interruption, batches, shards and merge."""

from __future__ import annotations

import json

import pytest

from test_cli import tiny_dir, vtwctl  # noqa: F401  (fixture)
from vtwctl import tasks
from vtwctl.evaluate import evaluate, merge, read_records


@pytest.fixture(scope="module")
def loaded(tiny_dir):  # noqa: F811
    from vtwctl import load

    return load(str(tiny_dir), device="cpu")


def answers(records):
    return {r["id"]: r["answer"] for r in records}


def test_resume_after_interruption_loses_nothing(loaded, tmp_path):
    task = tasks.get("shapes")
    full = evaluate(loaded, task, 2, limit=6, batch_size=2, output=tmp_path / "full.jsonl")
    out = tmp_path / "run.jsonl"
    calls = []

    def stop_after_first_batch(done, total):
        calls.append(done)
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(loaded, task, 2, limit=6, batch_size=2, output=out, progress=stop_after_first_batch)
    assert len(read_records(out)) == 2  # the finished batch is on disk
    with out.open("a") as f:
        f.write('{"id": "torn')  # a crash mid-write leaves a torn line: it is ignored
    resumed = evaluate(loaded, task, 2, limit=6, batch_size=2, output=out)
    assert resumed.new_samples == 4 and resumed.samples == 6
    recs = read_records(out)
    assert len({r["id"] for r in recs}) == 6
    assert answers(recs) == answers(read_records(tmp_path / "full.jsonl"))
    assert resumed.metrics == pytest.approx(full.metrics)


def test_batched_equals_batch_size_one(loaded, tmp_path):
    task = tasks.get("shapes")
    one = evaluate(loaded, task, 2, limit=8, batch_size=1, output=tmp_path / "b1.jsonl")
    four = evaluate(loaded, task, 2, limit=8, batch_size=4, output=tmp_path / "b4.jsonl")
    assert answers(read_records(tmp_path / "b1.jsonl")) == answers(read_records(tmp_path / "b4.jsonl"))
    assert one.metrics == pytest.approx(four.metrics)


def test_shards_merge_to_the_unsharded_run(loaded, tmp_path):
    task = tasks.get("shapes")
    whole = evaluate(loaded, task, 3, limit=7, output=tmp_path / "whole.jsonl")
    parts = [tmp_path / f"part{i}.jsonl" for i in range(3)]
    for i, p in enumerate(parts):
        evaluate(loaded, task, 3, limit=7, output=p, shard=(i, 3))
    assert sorted(len(read_records(p)) for p in parts) == [2, 2, 3]
    merged = merge(parts, tmp_path / "merged.jsonl")
    assert merged.samples == 7 and merged.metrics == pytest.approx(whole.metrics)
    assert answers(read_records(tmp_path / "merged.jsonl")) == answers(read_records(tmp_path / "whole.jsonl"))


def test_metrics_by_hand(loaded, tmp_path):
    task = tasks.get("shapes")
    evaluate(loaded, task, 2, limit=6, output=tmp_path / "m.jsonl")
    recs = read_records(tmp_path / "m.jsonl")
    fake = [dict(r, correct=(i % 2 == 0)) for i, r in enumerate(recs)]  # formats cycle mc, yesno, short
    m = task.metrics(fake)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["accuracy_mc"] == pytest.approx(1 / 2)  # rows 0 (right) and 3 (wrong)
    assert m["accuracy_yesno"] == pytest.approx(1 / 2) and m["accuracy_short"] == pytest.approx(1 / 2)
    assert m["chance_yesno"] == 0.5


def test_image_modes(loaded, tmp_path):
    task = tasks.get("shapes")
    none = evaluate(loaded, task, None, limit=3, image_mode="none", output=tmp_path / "none.jsonl")
    blank = evaluate(loaded, task, None, limit=3, image_mode="blank", output=tmp_path / "blank.jsonl")
    assert none.mean_vision_tokens == 0 and blank.mean_vision_tokens == 16
    normal = read_records(evaluate(loaded, task, None, limit=3, output=tmp_path / "n.jsonl").output)
    blank_recs = read_records(tmp_path / "blank.jsonl")
    assert [r["prompt_hash"] for r in normal] == [r["prompt_hash"] for r in blank_recs]


def test_cli_dataset_json_and_mismatch(tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "r.jsonl"
    res = vtwctl("run", "--model", tiny_dir, "--dataset", "shapes", "--limit", "3", "--k", "2", "--output", out,
                 "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert {"model", "dataset", "k", "samples", "metrics", "mean_latency_s"} <= set(summary)
    assert summary["k"] == 2 and summary["samples"] == 3 and 0 <= summary["metrics"]["accuracy"] <= 1
    again = vtwctl("run", "--model", tiny_dir, "--dataset", "shapes", "--limit", "3", "--k", "3", "--output", out)
    assert again.returncode == 2 and "holds results of another run" in again.stderr
    merged = vtwctl("merge", out, "--json")
    assert merged.returncode == 0 and json.loads(merged.stdout)["samples"] == 3
    bad = vtwctl("run", "--model", tiny_dir, "--dataset", "shapes", "--k", "2", "--shard", "3/2")
    assert bad.returncode == 2 and "0 <= I < N" in bad.stderr
    auto = vtwctl("run", "--model", tiny_dir, "--dataset", "shapes", "--k", "auto", "--profile-dir", tmp_path)
    assert auto.returncode == 2 and "no calibration record" in auto.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_merge(tiny_dir, tmp_path):  # noqa: F811
    import subprocess
    import sys

    out = tmp_path / "dp.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "vtwctl.cli", "run", "--model", str(tiny_dir), "--dataset", "shapes", "--limit", "5", "--k", "2",
           "--output", str(out), "--device", "cpu", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 5
    assert len(read_records(out)) == 5
