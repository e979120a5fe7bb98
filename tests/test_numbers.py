"""The numbers shown are the right ones: CPU peak memory, FastV settings in profile JSON, calibrate
--accuracy N, and merge (missing shards, bad files, duplicates) checked by hand."""

from __future__ import annotations

import json

import pytest
import torch

from console import assert_one_line, batch, script


def test_cpu_peak_is_the_running_maximum_of_allocations():
    from vtwctl.measure import CPUPeak

    keep = torch.empty(3_000_000)  # allocated before: not part of the peak, and freeing it is not negative
    with CPUPeak() as meter:
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # +8 MB: 12 MB live
        del a
        c = torch.empty(500_000)  # 10 MB live
        del b, c, keep
        d = torch.empty(250_000)  # 1 MB live
    assert meter.bytes == 12_000_000
    del d
    with CPUPeak() as meter:
        pass
    assert meter.bytes == 0


FASTV = ["profile", "--model", "llava-1.5-7b", "--flops-only", "--method", "paper", "--k", "16", "--fastv-k", "3",
         "--fastv-ratio", "0.75", "--json"]


def test_profile_json_keeps_the_fastv_drop_ratio(cli):
    res = cli["fastv"]
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["fastv_settings"] == {"k": 3, "ratio": 0.75, "preset": "paper"}
    assert d["fastv"]["drop_ratio"] == 0.75 and d["fastv"]["k"] == 3
    # Eq. 1 by hand for FastV: 3 layers on all tokens, 29 on the text and a quarter of the vision tokens
    h, v, t = 4096, 576, d["tokens"]["text"]

    def omega(s):
        return 2 * s * s * h + 12 * s * h * h

    fastv = 2 * (3 * omega(v + t) + 29 * omega(t + v // 4)) / 1e12
    assert d["fastv"]["tflops"] == pytest.approx(fastv, rel=1e-3)


def test_calibrate_accuracy_uses_n_samples(demo_loaded):
    """--accuracy 4 with --samples 1 scores 4 samples; each accuracy equals an independent count."""
    res = script("calibrate", "--k-min", "7", "--samples", "1", "--accuracy", "4", "--no-save", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    d = json.loads(res.stdout)
    assert d["samples"] == 1 and d["accuracy_samples"] == 4
    from vtwctl import generate, tasks

    task, loaded = tasks.get("shapes"), demo_loaded
    pool = task.open("validation")
    where = {sid: j for j, sid in enumerate(pool.ids)}
    assert len(set(d["accuracy_ids"])) == 4  # four different samples of the split (the KL one first)
    right = {k: 0 for k in (7, None)}
    for s in (pool[where[sid]] for sid in d["accuracy_ids"]):
        inputs = loaded.sample_inputs(s)
        for k in right:
            answer = generate(loaded, inputs, k=k, max_new_tokens=task.max_new_tokens).answers[0]
            right[k] += bool(task.score(s, task.parse(s, answer)))
    assert d["accuracy"] == {"7": pytest.approx(right[7] / 4)}
    assert d["baseline_accuracy"] == pytest.approx(right[None] / 4)


def _rec(i, shard, correct=True, **kw):
    r = {"id": f"s{i}", "model": "m", "dataset": "shapes", "split": "test", "k": 2, "positions": "keep",
         "image_mode": "normal", "correct": correct, "parsed": "x", "target": "x", "total_s": 0.5,
         "prefill_s": 0.1, "decode_s": 0.4, "num_vision_tokens": 16, "num_text_tokens": 20, "new_tokens": 3,
         "meta": {"format": "short", "kind": "count", "chance": 0.25}, "shard": shard}
    r.update(kw)
    return r


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every command line of this module's CLI checks, run in one subprocess."""
    tmp = tmp_path_factory.mktemp("merge")

    def write(name, recs, extra=""):
        p = tmp / name
        p.write_text("".join(json.dumps(r) + "\n" for r in recs) + extra)
        return p

    s0 = write("s0.jsonl", [_rec(0, "0/3"), _rec(3, "0/3", correct=False), _rec(3, "0/3", correct=False)])
    s1 = write("s1.jsonl", [_rec(1, "1/3")], extra='{"id": "s4", "mo')  # a torn last line: skipped
    s2 = write("s2.jsonl", [_rec(2, "2/3")])
    noid = write("noid.jsonl", [{k: v for k, v in _rec(5, "0/3").items() if k != "id"}])
    array = write("array.jsonl", [_rec(6, "0/3")], extra='["s7", true]\n')
    binary = tmp / "bin.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    other = write("other.jsonl", [_rec(9, "1/4")])
    out = tmp / "merged.jsonl"
    errors = [
        (["merge", s0, s1], "shard 2/3 missing"),
        (["merge", s0, s1, tmp / "nope.jsonl"], "results file not found"),
        (["merge", s0, noid], "line 1 is a record without an 'id'"),
        (["merge", s0, array], "line 2 is a JSON array"),
        (["merge", s0, binary], f"{binary} is not a text file"),
        (["merge", s0, other], "different shardings"),
    ]
    named = {"partial": ["merge", s0, s1, "--partial", "--json"],
             "full": ["merge", s2, s1, s0, "--output", out, "--json"], "fastv": FASTV}
    results = batch([c for c, _ in errors] + list(named.values()))
    got = dict(zip(named, results[len(errors):]))
    got["errors"] = [(message, res) for (_, message), res in zip(errors, results)]
    got["out"] = out
    return got


def test_merge_reports_missing_shards_bad_files_and_counts_once(cli):
    for message, res in cli["errors"]:
        assert_one_line(res, message)
    partial, full = cli["partial"], cli["full"]
    assert partial.returncode == 0 and "shard 2/3 missing" in partial.stderr
    assert json.loads(partial.stdout)["missing_shards"] == ["2/3"]
    d = json.loads(full.stdout)
    assert full.returncode == 0 and d["samples"] == 4 and d["missing_shards"] == []  # s3 once
    assert d["metrics"]["accuracy"] == pytest.approx(3 / 4)
    assert sorted(json.loads(x)["id"] for x in cli["out"].read_text().splitlines()) == ["s0", "s1", "s2", "s3"]


def test_resume_and_summary_count_every_id_once(tiny_dir, tmp_path):
    """A file that two runs did write into (duplicates) resumes and summarises each sample once."""
    from vtwctl import load, tasks
    from vtwctl.evaluate import evaluate, read_records

    loaded = load(str(tiny_dir), device="cpu")
    task = tasks.get("shapes")
    out = tmp_path / "r.jsonl"
    evaluate(loaded, task, 2, limit=3, output=out)
    recs = read_records(out)
    with out.open("a") as f:  # what two interleaved runs left behind before the lock existed
        for r in recs[:2]:
            f.write(json.dumps(r) + "\n")
    summary = evaluate(loaded, task, 2, limit=4, output=out)
    assert summary.samples == 4 and summary.new_samples == 1
    assert len(read_records(out)) == 3 + 2 + 1


def test_decode_is_timed_step_by_step(demo_loaded):
    """Decode per token is the median of stamped step durations (one stamp per generated token), not a
    difference of medians: positive whatever the load, one value per repeat, the repeats recorded."""
    from vtwctl import tasks
    from vtwctl.measure import Stat, _step_clock, measure_many, spread

    s = tasks.get("shapes").load("test", 1)[0]
    x = demo_loaded.build_inputs(s.prompt, images=s.images)
    clock = _step_clock(cuda=False)
    from transformers import StoppingCriteriaList

    with torch.inference_mode():
        demo_loaded.model.generate(**x, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                   stopping_criteria=StoppingCriteriaList([clock]))
    assert len(clock.marks) == 6 and len(clock.steps()) == 5 and all(d > 0 for d in clock.steps())
    ms = measure_many(demo_loaded, x, [("baseline", None), ("vtw", 4)], max_new_tokens=6, warmup=0, repeats=2,
                      max_repeats=2, target_spread=0.0)
    for m in ms:
        assert m.repeats == 2 and len(m.decode.samples) == 2 and m.decode_s_per_token > 0
        assert m.decode_s_per_token == m.decode.median and isinstance(m.stable, bool)
    # with target 0 the spread can only be met by identical repeats: said, not hidden
    every = all(spread(m.prefill) <= 0 and spread(m.decode) <= 0 for m in ms)
    assert all(m.stable == every for m in ms)
    assert spread(Stat.of([1.0, 2.0, 3.0])) == pytest.approx(1.0)  # (p90 - p10) / median by hand: (3 - 1) / 2


def test_nvml_reads_the_gpu_torch_means_and_initialises_once(monkeypatch):
    """NVML numbers GPUs physically; torch numbers the visible ones: cuda:1 under CUDA_VISIBLE_DEVICES=5,2 is
    NVML's GPU 2 (or its UUID where torch reports one). nvmlInit runs once per process."""
    import sys
    from types import SimpleNamespace

    from vtwctl import measure

    used = {("index", 1): 111, ("index", 2): 222, ("uuid", "GPU-feed"): 333, ("uuid", "MIG-abc"): 444}
    calls = {"init": 0}

    def init():
        calls["init"] += 1

    fake = SimpleNamespace(nvmlInit=init, nvmlDeviceGetHandleByIndex=lambda i: ("index", i),
                           nvmlDeviceGetHandleByUUID=lambda u: ("uuid", u),
                           nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=used[h]))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(measure, "_NVML", {})

    def no_uuid(index):
        raise AttributeError("uuid")

    monkeypatch.setattr(torch.cuda, "get_device_properties", no_uuid)
    gpu1 = torch.device("cuda", 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,2")
    assert measure.nvml_used_bytes(gpu1) == 222
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,MIG-abc")
    assert measure.nvml_used_bytes(gpu1) == 444
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert measure.nvml_used_bytes(gpu1) == 111
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid="feed"))
    assert measure.nvml_used_bytes(gpu1) == 333  # the UUID wins over any numbering
    assert calls["init"] == 1
    assert measure.visible_device(0, "3, 1") == 3 and measure.visible_device(1, "") == 1
