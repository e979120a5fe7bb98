"""Paths, stores and data are checked before any model loads or any work is done, with the file named.

The cases use ``--model llava-1.5-7b``, which is not in this machine's cache: had a command tried to
load it first, the message would be "not in the local cache", not the one asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from console import assert_one_line, batch, script
from vtwctl import records

BIG = ["--model", "llava-1.5-7b"]


@pytest.fixture(scope="module")
def bad_places(tmp_path_factory):
    root = tmp_path_factory.mktemp("places")
    (root / "a-file").write_text("not a directory\n")
    stores = {}
    for name, text in {"corrupt": "{not json", "array": "[]", "badk": json.dumps(
            {"model": "llava-1.5-7b", "calibrations": [{"dataset": "sqa", "k": "abc"}]})}.items():
        d = root / f"store-{name}"
        d.mkdir()
        (d / "llava-1.5-7b.json").write_text(text)
        stores[name] = d
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / "outdir").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["x"], "question": ["q"]}), root / "test.parquet")
    return root, stores


def test_everything_is_checked_before_the_model_loads(bad_places):
    root, stores = bad_places
    f = root / "a-file"
    cases = [
        ({"argv": ["calibrate", *BIG], "env": {"VTWCTL_PROFILE_DIR": f}}, f"calibration store {f}"),
        ({"argv": ["calibrate", *BIG, "--profile-dir", stores["corrupt"]]},
         f"calibration store {stores['corrupt'] / 'llava-1.5-7b.json'} is not valid JSON"),
        ({"argv": ["calibrate", *BIG, "--profile-dir", stores["array"]]},
         f"calibration store {stores['array'] / 'llava-1.5-7b.json'} has the wrong shape"),
        ({"argv": ["run", *BIG, "--dataset", "shapes", "--k", "auto", "--profile-dir", stores["badk"]]},
         f"{stores['badk'] / 'llava-1.5-7b.json'}: record 0 has an invalid k"),
        ({"argv": ["run", *BIG, "--prompt", "hi", "--profile-dir", stores["corrupt"]]}, "is not valid JSON"),
        ({"argv": ["profile", *BIG, "--flops-only", "--profile-dir", stores["array"]]}, "has the wrong shape"),
        ({"argv": ["run", *BIG, "--dataset", "shapes", "--k", "2", "--output", root / "outdir"]},
         f"results file {root / 'outdir'} is a directory"),
        ({"argv": ["run", *BIG, "--dataset", "shapes", "--k", "2", "--output", root / "notes.csv"]},
         f"{root / 'notes.csv'} is not a vtwctl results file"),
        ({"argv": ["run", *BIG, "--dataset", "shapes", "--k", "2", "--output", f / "r.jsonl"]},
         f"{f} is a file, not a directory"),
        ({"argv": ["attention", *BIG, "--out", f]}, f"output directory {f} is a file"),
        ({"argv": ["profile", *BIG, "--csv", root / "outdir"]}, f"CSV file {root / 'outdir'} is a directory"),
        ({"argv": ["profile", *BIG, "--plot", f / "p.png"]}, "is a file, not a directory"),
        ({"argv": ["calibrate", *BIG, "--plot", root / "outdir"]}, f"plot {root / 'outdir'} is a directory"),
        ({"argv": ["data", "export", "shapes", f]}, f"output directory {f} is a file"),
        ({"argv": ["run", *BIG, "--dataset", "shapes", "--k", "2", "--data-dir", root / "test.parquet"]},
         "lacks the columns image, answer, format, kind, chance that shapes reads"),
        ({"argv": ["merge", root / "outdir"]}, f"{root / 'outdir'} is a directory, not a results file"),
    ]
    refused = root / "sub" / "r.jsonl"  # a run refused (here: the model is not cached) leaves no empty file
    cases.append(({"argv": ["run", *BIG, "--dataset", "shapes", "--k", "2", "--output", refused]},
                  "not in the local cache"))
    if Path("/proc/version").exists():  # unwritable even for root (a chmod'ed file is not)
        cases.append(({"argv": ["run", *BIG, "--dataset", "shapes", "--k", "2", "--output", "/proc/version"]},
                      "cannot write results file /proc/version"))
    results = batch([c for c, _ in cases])
    for (_case, message), res in zip(cases, results):
        assert_one_line(res, message)
        assert "not in the local cache" not in res.stderr or message == "not in the local cache"
    assert not refused.exists()


_SAVER = r"""
import sys
from vtwctl import records
for i in range(int(sys.argv[2])):
    records.save_record("m", {"dataset": "d", "k": i, "eta": 0.003, "writer": sys.argv[3]}, sys.argv[1])
"""


def test_concurrent_saves_lose_nothing_and_keep_valid_json(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path), "40", w]) for w in ("a", "b", "c")]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    data = json.loads((tmp_path / "m.json").read_text())
    assert sorted((r["writer"], r["k"]) for r in data["calibrations"]) == sorted(
        (w, i) for w in "abc" for i in range(40))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_identical_calibrations_are_one_record(tmp_path):
    rec = {"dataset": "shapes", "eta": 0.003, "k": 4, "kl": {"4": 0.001}, "samples": 20, "date": "2026-01-01"}
    records.save_record("m", rec, tmp_path)
    records.save_record("m", dict(rec, date="2026-02-02", versions={"torch": "x"}), tmp_path)
    records.save_record("m", dict(rec, eta=0.004), tmp_path)  # another threshold: another record
    recs = records.user_records("m", tmp_path)
    assert [(r["eta"], r["date"]) for r in recs] == [(0.003, "2026-02-02"), (0.004, "2026-01-01")]


def test_store_files_are_strict_json(tmp_path):
    records.save_record("m", {"dataset": "d", "k": 1, "eta": 0.003, "kl": {"1": float("nan")}}, tmp_path)
    text = (tmp_path / "m.json").read_text()

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(text, parse_constant=refuse)
    assert data["calibrations"][0]["kl"]["1"] is None


def test_a_failed_save_after_calibrating_still_prints_the_result(tiny_dir, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import vtwctl.records as p\n"
        "def save_record(*a, **k):\n    raise OSError(28, 'No space left on device')\n"
        "p.save_record = save_record\n")
    res = script("calibrate", "--model", tiny_dir, "--k-min", "3", "--samples", "1", "--profile-dir", tmp_path,
                 "--json", env={"PYTHONPATH": site})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("error: the calibration record could not be saved to ") and str(tmp_path) in last
    assert "No space left on device" in last and "the result is on stdout" in last
    out = json.loads(res.stdout)
    assert out["record"] is None and sorted(out["kl"]) == ["3", "4", "5"]
    assert os.listdir(tmp_path) == ["site"]
