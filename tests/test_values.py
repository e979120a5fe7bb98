"""Values that make no sense are refused (one line, exit 2) before a model loads; JSON out is strict."""

from __future__ import annotations

import json

import pytest

from console import assert_one_line, batch

BIG = ["--model", "llava-1.5-7b"]  # not cached here: a check that came after loading would say so


def test_bad_values_are_refused_before_loading():
    cases = [
        (["calibrate", *BIG, "--eta", "nan"], "--eta must be a finite KL threshold"),
        (["calibrate", *BIG, "--eta", "inf"], "--eta must be a finite KL threshold"),
        (["calibrate", *BIG, "--eta", "1e9"], "--eta must be a finite KL threshold in (0, 1]"),
        (["calibrate", *BIG, "--eta", "0.003,0.003"], "lists a value twice"),
        (["calibrate", *BIG, "--samples", "502"], "--samples 502 is more than the 501 samples of shapes/validation"),
        (["calibrate", *BIG, "--accuracy", "900"], "--accuracy 900 is more than the 501 samples"),
        (["calibrate", *BIG, "--split", "train2"], "unknown split 'train2' of shapes"),
        (["run", *BIG, "--dataset", "shapes", "--k", "2", "--limit", "610"],
         "--limit 610 is more than the 600 samples of shapes/test"),
        (["run", *BIG, "--dataset", "shapes", "--k", "2", "--split", "nope"], "unknown split 'nope'"),
        (["run", *BIG, "--dataset", "shapes", "--k", "two"], "--k must be an integer"),
        (["run", *BIG, "--example", "100000", "--k", "2"], "--example 100000 is past the end of shapes/test"),
        (["run", *BIG, "--prompt", ""], "--prompt is empty"),
        (["run", *BIG, "--prompt", "   "], "--prompt is empty"),
        (["run", *BIG, "--prompt", "hi", "--output", "x.jsonl"], "--output only applies with --dataset"),
        (["run", *BIG, "--prompt", "hi", "--sample", "--temperature", "nan"], "--temperature must be > 0"),
        (["run", *BIG, "--prompt", "hi", "--k", "3", "--no-withdraw"], "--k and --no-withdraw contradict"),
        (["profile", *BIG, "--index", "600"], "--index 600 is past the end of shapes/test"),
        (["profile", *BIG, "--prompt", ""], "--prompt is empty"),
        (["profile", *BIG, "--k", "4,x"], "--k must be an integer, a comma-separated list"),
        (["profile", *BIG, "--flops-only", "--fastv-ratio", "nan"], "--fastv-ratio must be in [0, 1]"),
        (["profile", *BIG, "--flops-only", "--count", "vision", "--vision-tokens", "0"], "give --vision-tokens > 0"),
        (["attention", *BIG, "--samples", "700"], "--samples 700 is more than the 600 samples of shapes/test"),
        (["attention", *BIG, "--k", "-2"], "K=-2 is out of range"),
    ]
    import torch

    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        cases.append((["run", *BIG, "--prompt", "hi", "--device", "mps"], "MPS (Apple GPU) is not available"))
    if not torch.cuda.is_available():
        cases.append((["run", *BIG, "--prompt", "hi", "--device", "cuda:1"], "CUDA is not available"))
    results = batch([c for c, _ in cases])
    for (argv, message), res in zip(cases, results):
        assert_one_line(res, message)
        assert "not in the local cache" not in res.stderr, argv


def test_json_output_is_strict(tmp_path):
    from vtwctl.files import dumps
    from vtwctl.results import append

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(dumps({"a": float("nan"), "b": [float("inf"), 1.5]}), parse_constant=refuse) == {
        "a": None, "b": [None, 1.5]}
    path = tmp_path / "r.jsonl"
    append(path, [{"id": "x", "total_s": float("nan")}])
    assert json.loads(path.read_text(), parse_constant=refuse)["total_s"] is None
    # the CLI's JSON: strict parsers accept it
    (res,) = batch([["profile", "--model", "llava-1.5-7b", "--flops-only", "--k", "8,16", "--json"]])
    assert res.returncode == 0, res.stderr
    json.loads(res.stdout, parse_constant=refuse)


@pytest.mark.parametrize("text", ["0.003", "0.006,0.005,0.004"])
def test_good_etas_parse(text):
    from vtwctl.cli.calibrate import parse_etas

    assert parse_etas(text) == [float(t) for t in text.split(",")]
