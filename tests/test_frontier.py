"""vtwctl frontier: the grid of points, the report built from records written here by hand (accuracy, exact
TFLOPs per sample, Pareto points, matched FLOPs, missing shards), and the command through the console script."""

from __future__ import annotations

import json

import pytest

from vtwctl import frontier as F
from vtwctl.errors import ArgumentError
from vtwctl.spec import RunSpec


def test_the_grid_by_hand():
    points = F.grid(["vtw", "fastv", "visionzip+vtw"], 8,
                    F.parse_grid(["vtw.k=2;4", "fastv.ratio=0.5,0.9", "visionzip.dominant=6;9"]))
    labels = [p.label for p in points]
    assert labels == ["stock", "vtw K=2", "vtw K=4", "fastv k=2 ratio=0.5", "fastv k=2 ratio=0.9",
                      "visionzip+vtw K=2 dominant=6 contextual=10", "visionzip+vtw K=2 dominant=9 contextual=10",
                      "visionzip+vtw K=4 dominant=6 contextual=10", "visionzip+vtw K=4 dominant=9 contextual=10"]
    assert F.parse_grid(["pdrop.layers=2,4,6;1,3,5"]) == {"pdrop": {"layers": ["2,4,6", "1,3,5"]}}
    # --set pins a setting instead of its declared grid; a grid beside it sweeps the other one
    pinned = F.grid(["pdrop"], 8, F.parse_grid(["pdrop.ratio=0.25;0.5"]), fixed={"pdrop": {"layers": (2, 4, 6)}})
    assert [p.label for p in pinned] == ["stock", "pdrop layers=2,4,6 ratio=0.25", "pdrop layers=2,4,6 ratio=0.5"]
    assert pinned[1].spec(RunSpec(settings={"pdrop": {"layers": (2, 4, 6)}})).options() == {
        "layers": (2, 4, 6), "ratio": 0.25}
    with pytest.raises(ArgumentError, match="below the model's 8 layers"):
        F.grid(["pdrop"], 8)  # the authors' 8,16,24 do not fit an 8-layer model
    assert [p.k for p in F.grid(["vtw"], 32)][1:] == [4, 8, 12, 16, 20, 24, 28]  # eighths of the depth
    for given, words in [(["vtw.k=9"], "out of range"), (["fastv.size=1"], "no setting 'size'"),
                         (["dart.k=9"], "out of range"), (["fastv.ratio"], "METHOD.NAME="),
                         (["fastv.ratio=2"], "[0, 1]")]:
        with pytest.raises(ArgumentError, match=None) as err:
            F.grid(["vtw", "fastv", "dart"], 8, F.parse_grid(given))
        assert words in str(err.value), (given, str(err.value))


def _records(path, rows, shard="0/1", first=0):
    with open(path, "w") as f:
        for i, (correct, vision, text) in enumerate(rows, first):
            f.write(json.dumps({"id": f"s{i}", "correct": correct, "num_vision_tokens": vision,
                                "num_text_tokens": text, "shard": shard,
                                "meta": {"format": "count", "chance": 0.25}}) + "\n")


def test_the_report_from_records_written_by_hand(tmp_path):
    from vtwctl import tasks
    from vtwctl.flops import dims_for, exact_flops

    dims, task = dims_for("llava-1.5-7b"), tasks.get("shapes")
    points = F.grid(["vtw"], dims.num_layers, F.parse_grid(["vtw.k=4;16;24"]))
    samples = [(True, 576, 60), (False, 576, 80)]  # two samples of other lengths
    accuracy = {"stock": [1, 1], "vtw K=4": [1, 0], "vtw K=16": [1, 1], "vtw K=24": [0, 1]}
    for p in points:
        _records(F.point_file(tmp_path, p, (0, 1)), [(bool(a), v, t) for a, (_, v, t) in zip(accuracy[p.label],
                                                                                           samples)])
    (tmp_path / F.LATENCY_FILE).write_text(json.dumps({"sample": "s0", "points": {
        "stock": {"prefill_s": 0.4}, "vtw K=4": {"prefill_s": 0.1}, "vtw K=16": {"prefill_s": 0.25}}}))

    def tf(k):  # per sample, prefill + the last position's lm_head, averaged
        reps = [exact_flops(dims, v, t, k=k) for _, v, t in samples]
        return sum(r.prefill + r.lm_head for r in reps) / len(reps) / 1e12

    budget = tf(16) * 1.01
    rep = F.report(tmp_path, points, task, dims, RunSpec(), "llava-1.5-7b", budget=budget)
    by = {r.point.label: r for r in rep.rows}
    assert [by[label].accuracy for label in accuracy] == [1.0, 0.5, 1.0, 0.5]
    for label, k in (("stock", None), ("vtw K=4", 4), ("vtw K=16", 16), ("vtw K=24", 24)):
        assert by[label].tflops == pytest.approx(tf(k))
    assert by["vtw K=16"].ratio == pytest.approx(tf(16) / tf(None))
    assert by["vtw K=4"].speedup == pytest.approx(4.0) and by["vtw K=24"].prefill_s is None
    # K=4: fewest FLOPs; K=16: more accurate; K=24 costs more than K=16 and is less accurate
    assert (by["vtw K=4"].pareto, by["vtw K=16"].pareto, by["vtw K=24"].pareto) == (True, True, False)
    assert rep.matched == {"vtw": "vtw K=16"}
    data = rep.to_dict()
    assert data["budget_tflops"] == budget and len(data["rows"]) == 4 and not data["warnings"]
    F.plot(rep, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_shards_are_named(tmp_path):
    from vtwctl import tasks
    from vtwctl.flops import dims_for

    dims = dims_for("llava-1.5-7b")
    points = [F.Point("stock")]
    _records(F.point_file(tmp_path, points[0], (0, 3)), [(True, 576, 60)], shard="0/3")
    _records(F.point_file(tmp_path, points[0], (2, 3)), [(False, 576, 60)], shard="2/3", first=2)
    rep = F.report(tmp_path, points, tasks.get("shapes"), dims, RunSpec(), "m")
    assert rep.rows[0].samples == 2 and rep.rows[0].missing_shards == ["1/3"]
    assert any("1/3" in w for w in rep.warnings)


def test_the_command_on_the_demo_model(tmp_path):
    from console import batch, script

    out = tmp_path / "run"
    args = ["frontier", "--methods", "vtw,dart", "--grid", "vtw.k=4", "--grid", "dart.ratio=0.5", "--limit", "2",
            "--repeats", "1", "--output", str(out)]
    first = script(*args, "--plot", str(tmp_path / "f.png"), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert [r["label"] for r in data["rows"]] == ["stock", "vtw K=4", "dart k=2 ratio=0.5 pivots=4,4"]
    assert all(r["samples"] == 2 and r["prefill_s"] > 0 for r in data["rows"])
    assert data["rows"][1]["flops_ratio"] < 1 and data["rows"][0]["flops_ratio"] == 1
    files = sorted(p.name for p in out.glob("*.jsonl"))
    assert len(files) == 3 and (out / "latency.json").is_file() and (out / "frontier.json").is_file()
    lines = {f: (out / f).read_text().count("\n") for f in files}
    again = script(*args, "--report-only", "--json")  # no weights loaded: the directory as it stands
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["rows"] == data["rows"]
    assert {f: (out / f).read_text().count("\n") for f in files} == lines == {f: 2 for f in files}
    (tmp_path / "file").write_text("x")
    bad = batch([["frontier", "--output", str(tmp_path / "file")],
                 ["frontier", "--output", str(out), "--grid", "vtw.k=99"],
                 ["frontier", "--output", str(out), "--methods", "vtw,nope"]])
    assert [b.returncode for b in bad] == [2, 2, 2], [b.stderr for b in bad]
    assert "is a file" in bad[0].stderr and "out of range" in bad[1].stderr and "unknown method" in bad[2].stderr
