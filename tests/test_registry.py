"""One settings table for every method: declared settings, their checks, RunSpec.settings, --set, and the
FLOPs a reducer's and the field's rows get (hand counts, not the code under test)."""

from __future__ import annotations

import json

import pytest

from vtwctl.engine.registry import METHODS, Setting, canonical, parts
from vtwctl.errors import ArgumentError
from vtwctl.spec import RunSpec


def test_a_setting_parses_and_checks_its_values():
    ratio = Setting("ratio", 0.5, "", "float", lo=0.0, hi=1.0)
    assert ratio.parse("0.25", "x") == 0.25 and ratio.parse(1, "x") == 1.0
    layers = Setting("layers", (8, 16, 24), "", "ints", lo=1)
    assert layers.parse("2,4, 6", "x") == (2, 4, 6) and layers.parse([3, 5], "x") == (3, 5)
    pair = Setting("pivots", (4, 4), "", "pair", lo=0)
    assert pair.parse("2,0", "x") == (2, 0)
    k = Setting("k", 2, "", "int", lo=1)
    for setting, bad, words in [(ratio, "1.5", "x must be in [0, 1]"), (ratio, "nan", "in [0, 1]"),
                                (ratio, "x", "a number"),
                                (ratio, True, "a number"), (layers, "4,2", "increasing"), (layers, "", "comma list"),
                                (layers, "0,2", ">= 1"), (pair, "1", "two integers"), (k, "2.5", "an integer"),
                                (k, 0, ">= 1")]:
        with pytest.raises(ArgumentError, match=None) as err:
            setting.parse(bad, "x")
        assert words in str(err.value), (bad, str(err.value))


def test_names_aliases_and_compositions():
    assert canonical("Baseline") == "stock" and canonical("vtw_random") == "vtw-random"
    assert canonical("VisionZip+VTW") == "visionzip+vtw"
    reducer, policy = parts("visionzip")
    assert reducer.name == "visionzip" and policy.name == "stock"
    for bad in ("vtw+visionzip", "fastv+dart", "visionzip+visionzip", "visionzip+stock", "fast"):
        with pytest.raises(ArgumentError):
            parts(bad)


def test_run_spec_settings_are_checked_and_filled_in():
    spec = RunSpec(method="dart", settings={"dart": {"ratio": "0.5"}})
    assert spec.options() == {"k": 2, "ratio": 0.5, "pivots": (4, 4)}  # the authors' defaults filled in
    assert spec.settings == {"dart": {"ratio": 0.5}}
    assert RunSpec(fastv_k=3, dart_pivots=(2, 2)).settings == {"fastv": {"k": 3}, "dart": {"pivots": (2, 2)}}
    assert spec.with_options("fastv", ratio=0.9).options("fastv") == {"k": 2, "ratio": 0.9}
    same = RunSpec(method="dart", dart_ratio=0.5)  # the old field name, the same spec
    assert same == spec and hash(same) == hash(spec) and len({same, spec, RunSpec(method="dart")}) == 2
    assert RunSpec(method="visionzip+vtw", k=4).options() == {"dominant": 54, "contextual": 10}
    assert RunSpec(method="fastv", k=4).k.stock and RunSpec(method="visionzip+vtw", k=4).k.layer == 4
    for settings, words in [({"nope": {"k": 1}}, "unknown method"), ({"dart": {"size": 1}}, "no setting 'size'"),
                            ({"dart": {"pivots": (0, 0)}}, "not both 0"), ({"fastv": {"ratio": 2}}, "[0, 1]"),
                            ({"visionzip": {"dominant": 0}}, ">= 1"), ({"dart": 0.5}, "a mapping")]:
        with pytest.raises(ValueError, match=None) as err:
            RunSpec(settings=settings)
        assert words in str(err.value)


def test_vision_tokens_per_layer_by_hand():
    """FastV keeps round(V * (1 - ratio)) (the authors' topk count): 5 tokens at 0.5 keep round(2.5) = 2; DART
    keeps 2 + (round(40 * 0.5) // 4) * 4 = 22 of 40 with 2 + 2 pivots; VisionZip hands the model 6 + 3."""
    assert METHODS["fastv"].vision_by_layer(4, 5, 10, {"k": 1, "ratio": 0.5}) == [5, 2, 2, 2]
    assert METHODS["fastv"].vision_by_layer(3, 3, 10, {"ratio": 0.5}) == [3, 3, 2]  # round(1.5) = 2 kept
    assert METHODS["dart"].vision_by_layer(3, 40, 10, {"k": 1, "ratio": 0.5, "pivots": (2, 2)}) == [40, 22, 22]
    assert METHODS["visionzip"].vision_tokens(16, {"dominant": 6, "contextual": 3}) == 9
    with pytest.raises(ArgumentError, match="out of range"):
        METHODS["dart"].vision_by_layer(3, 40, 10, {"k": 4})
    with pytest.raises(ArgumentError, match="more than"):
        METHODS["visionzip"].vision_tokens(16, {"dominant": 16, "contextual": 2})


def test_flops_rows_of_the_reducer_and_its_composition():
    """visionzip's row is the stock model on 64 vision tokens; visionzip+vtw is VTW at K on them (exact_flops
    called with the hand count, the rows through the registry)."""
    from vtwctl.costs import flops_rows
    from vtwctl.flops import dims_for, exact_flops

    dims = dims_for("llava-1.5-7b")
    rows, _ = flops_rows(dims, 576, 66, [16], RunSpec(), "exact", rows=("stock", "visionzip", "visionzip+vtw"))
    by = {r.method: r for r in rows}

    def total(rep):
        return (rep.prefill + rep.lm_head) / 1e12

    assert by["visionzip"].tflops == pytest.approx(total(exact_flops(dims, 64, 66)))
    assert by["visionzip+vtw"].tflops == pytest.approx(total(exact_flops(dims, 64, 66, k=16)))
    assert by["visionzip+vtw"].k == 16 and by["visionzip"].k is None
    assert by["visionzip"].ratio == pytest.approx(total(exact_flops(dims, 64, 66)) / total(exact_flops(dims, 576, 66)))


def test_set_on_the_command_line():
    from console import batch, script

    bad = batch([["run", "--method", "dart", "--example", "0", "--set", "dart.ratio=2"],
                 ["run", "--method", "dart", "--example", "0", "--set", "dart.ratio=0.5", "--dart-ratio", "0.6"],
                 ["run", "--method", "dart", "--example", "0", "--set", "dart.size=3"],
                 ["run", "--method", "dart", "--example", "0", "--set", "ratio=3"],
                 ["profile", "--flops-only", "--method", "stock,dart", "--set", "dart.k=99"]])
    assert [b.returncode for b in bad] == [2] * 5, [b.stderr for b in bad]
    assert "dart.ratio must be in [0, 1]" in bad[0].stderr
    assert "given twice" in bad[1].stderr and "no setting 'size'" in bad[2].stderr
    assert "METHOD.NAME=VALUE" in bad[3].stderr and "dart.k" in bad[4].stderr
    out = script("profile", "--flops-only", "--method", "stock,fastv,visionzip+vtw", "--k", "4", "--set",
                 "fastv.ratio=0.75", "--set", "visionzip.dominant=20", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fastv"]["settings"] == {"k": 2, "ratio": 0.75}
    assert data["visionzip+vtw"]["settings"] == {"dominant": 20, "contextual": 10} and data["visionzip+vtw"]["k"] == 4
