"""Tests of the "shapes" benchmark generator (vtwctl.demo.shapes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from vtwctl.demo import shapes


def _key(s):
    return (s["scene"], s["spec"])


def test_deterministic_for_a_seed():
    a = shapes.generate("validation", 12, seed=3)
    b = shapes.generate("validation", 12, seed=3)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "image"} == {k: v for k, v in y.items() if k != "image"}
        assert x["image"].tobytes() == y["image"].tobytes()
    c = shapes.generate("validation", 12, seed=4)
    assert [_key(s) for s in a] != [_key(s) for s in c]


def test_splits_are_disjoint():
    train = shapes.generate("train", 900)
    val = shapes.generate("validation")
    test = shapes.generate("test")
    assert len(val) == shapes.SPLIT_SIZES["validation"] and len(test) == 600
    ids = [set(s["id"] for s in split) for split in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    keys = [set(_key(s) for s in split) for split in (train, val, test)]
    assert not (keys[0] & keys[2] or keys[1] & keys[2] or keys[0] & keys[1])
    # not even the same scene layout shows up in two splits
    scenes = [set(s["scene"] for s in split) for split in (train, val, test)]
    assert not (scenes[0] & scenes[2] or scenes[1] & scenes[2] or scenes[0] & scenes[1])
    for name, split in (("train", train), ("validation", val), ("test", test)):
        assert all(shapes.split_of_scene(s["scene"]) == name for s in split)


def test_test_split_is_balanced():
    test = shapes.generate("test")
    assert Counter(s["format"] for s in test) == {"mc": 200, "yesno": 200, "short": 200}
    assert Counter(s["answer"] for s in test if s["format"] == "yesno") == {"yes": 100, "no": 100}
    letters = Counter(s["answer"] for s in test if s["format"] == "mc")
    assert set(letters) <= set("ABCD") and min(letters.values()) > 20


def _independent_answer(scene, spec):
    """A second, independent implementation working on the scene JSON only."""
    kind, fmt = spec["kind"], spec["format"]
    by_shape = {o["shape"]: o for o in scene}
    by_colour = {o["colour"]: o for o in scene}
    by_cell = {o["cell"]: o for o in scene}
    if kind == "colour_of_shape":
        word = by_shape[spec["shape"]]["colour"]
    elif kind == "shape_of_colour":
        word = by_colour[spec["colour"]]["shape"]
    elif kind == "count":
        word = str(len(scene))
    elif kind == "position_of":
        word = by_colour[spec["colour"]]["cell"]
        assert by_colour[spec["colour"]]["shape"] == spec["shape"]
    elif kind == "exists":
        o = by_colour.get(spec["colour"])
        word = "yes" if o is not None and o["shape"] == spec["shape"] else "no"
    elif kind == "shape_at":
        o = by_cell.get(spec["cell"])
        if fmt == "yesno":
            word = "yes" if o is not None and o["shape"] == spec["shape"] else "no"
        else:
            word = o["shape"]
    else:
        raise AssertionError(kind)
    if fmt == "mc":
        return "ABCDE"[spec["choices"].index(word)]
    return word


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_answers_consistent_with_scene(split):
    for s in shapes.generate(split, 300):
        scene, spec = json.loads(s["scene"]), json.loads(s["spec"])
        assert 1 <= len(scene) <= 3
        assert len({o["shape"] for o in scene}) == len(scene) == len({o["colour"] for o in scene})
        assert len({o["cell"] for o in scene}) == len(scene)
        assert s["answer"] == shapes.answer_from_scene(s["scene"], s["spec"]) == _independent_answer(scene, spec)
        assert s["format"] == spec["format"] and s["kind"] == spec["kind"]
        assert s["choices"] == spec.get("choices", [])
        if s["format"] == "mc":
            assert len(set(s["choices"])) == len(s["choices"]) >= 3
            assert s["chance"] == pytest.approx(1 / len(s["choices"]))
        elif s["format"] == "yesno":
            assert s["answer"] in ("yes", "no") and s["chance"] == 0.5
        else:
            assert " " not in s["answer"] and 0 < s["chance"] < 0.5


def test_image_matches_scene():
    """The renderer draws each object of the scene JSON at its position, in its colour."""
    for s in shapes.generate("test", 60):
        img = s["image"]
        assert img.size == (96, 96) and img.mode == "RGB"
        for o in json.loads(s["scene"]):
            px = img.getpixel((o["x"], o["y"] + 2))
            ref = shapes.COLOURS[o["colour"]]
            assert max(abs(a - b) for a, b in zip(px, ref)) <= 16, (o, px)
            assert o["cell"] == shapes.CELLS[(o["y"] // 32) * 3 + o["x"] // 32]


def test_prompt_formats():
    for s in shapes.generate("test", 30):
        q = s["question"]
        if s["format"] == "mc":
            opts = "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(s["choices"]))
            assert q.endswith("\n" + opts + "\nAnswer with the option's letter from the given choices directly.")
            assert not q.startswith("Context:")  # lmms-eval omits an empty hint
        else:
            assert q.endswith("?\nAnswer the question using a single word or phrase.")
        if s["format"] == "yesno":
            assert re.match(r"^Is there a ", q)


@pytest.mark.parametrize(
    "fmt,pred,answer,ok",
    [
        ("mc", "B", "B", True),
        ("mc", "b", "B", True),
        ("mc", "B.", "B", True),
        ("mc", "(B)", "B", True),
        ("mc", " The answer is B", "B", True),
        ("mc", "Answer: (C) red", "C", True),
        ("mc", "B. red", "B", True),
        ("mc", "C", "B", False),
        ("mc", "", "B", False),
        ("mc", "red", "B", False),
        ("yesno", "Yes.", "yes", True),
        ("yesno", "yes", "yes", True),
        ("yesno", "No, there is not.", "no", True),
        ("yesno", "no", "yes", False),
        ("yesno", "maybe", "yes", False),
        ("short", "Red", "red", True),
        ("short", "red.", "red", True),
        ("short", "It is red", "red", True),
        ("short", "The circle", "circle", True),
        ("short", "two", "2", True),
        ("short", "2", "2", True),
        ("short", "blue", "red", False),
        ("short", "", "red", False),
    ],
)
def test_score_parsing(fmt, pred, answer, ok):
    assert shapes.score(fmt, pred, answer) is ok


def test_dataset_and_export(tmp_path):
    dd = shapes.as_dataset(n_train=6, n_validation=6, n_test=6)
    assert set(dd) == {"train", "validation", "test"}
    row = dd["test"][0]
    assert row["image"].size == (96, 96) and row["answer"]
    paths = shapes.export(tmp_path, n_train=6, n_validation=3, n_test=6)
    assert sorted(p.name for p in paths) == ["test.parquet", "train.parquet", "validation.parquet"]
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(tmp_path / "test.parquet"), split="train")
    assert len(ds) == 6 and ds[0]["image"].size == (96, 96)
    assert ds[0]["question"] == shapes.generate("test", 1)[0]["question"]


def test_demo_package_import_is_light():
    code = (
        "import sys, vtwctl; before = set(sys.modules);"
        "import vtwctl.demo as d; assert d.MODEL_DIR.name == 'model';"
        "d.shapes.generate('test', 3);"
        "new = set(sys.modules) - before;"
        "bad = [m for m in ('torch', 'transformers', 'datasets') if m in new];"
        "assert not bad, bad"
    )
    import os
    from pathlib import Path

    import vtwctl

    src = str(Path(list(vtwctl.__path__)[0]).resolve().parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
