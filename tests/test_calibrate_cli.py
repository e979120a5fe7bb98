"""``vtwctl calibrate`` end to end on a tiny saved LLaVA, and its record feeding ``run --k auto``."""

from __future__ import annotations

import json

import pytest

from test_cli import tiny_dir, vtwctl  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def calibrated(tiny_dir, tmp_path_factory):  # noqa: F811
    import time

    store = tmp_path_factory.mktemp("profiles")
    plot = store / "kl.png"
    began = time.monotonic()
    out = vtwctl("calibrate", "--model", tiny_dir, "--k-min", "1", "--samples", "4", "--eta", "1,1e-12",
                 "--profile-dir", store, "--plot", plot, "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    # the recorded duration is a duration of this run (a loop variable once overwrote its start time)
    assert 0 < rec["seconds"] <= time.monotonic() - began
    return rec, store, plot


def test_json_and_choice(calibrated):
    rec, store, plot = calibrated
    assert rec["k_min"] == 1 and rec["samples"] == 4 and rec["split"] == "validation"
    assert sorted(rec["kl"]) == ["1", "2", "3", "4", "5"]
    kl = {int(k): v for k, v in rec["kl"].items()}
    first_below = min(k for k, v in kl.items() if v < 1.0)
    assert rec["k"]["1.0"] == first_below == 1  # random tiny model: every KL is far below 1
    assert rec["k"]["1e-12"] == 6  # nothing is below 1e-12: no withdrawal (K = N)
    assert plot.exists() and plot.stat().st_size > 1000


def test_record_round_trips_into_run_k_auto(calibrated, tiny_dir, tmp_path):  # noqa: F811
    from PIL import Image

    rec, store, _ = calibrated
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(img)
    out = vtwctl("run", "--model", tiny_dir, "--image", img, "--prompt", "what colour ?", "--k", "auto",
                 "--profile-dir", store, "--max-new-tokens", "2", "--json")
    assert out.returncode == 0, out.stderr
    # the first eta given (1.0) is the newest record, so --k auto uses its K
    assert json.loads(out.stdout)["k"] == rec["k"]["1.0"]
    assert "from the calibration record" in out.stderr


@pytest.mark.parametrize("args,message", [
    (["--eta", "0"], "eta must be > 0"),
    (["--eta", "-0.1"], "eta must be > 0"),
    (["--eta", "abc"], "comma-separated list"),
    (["--k-min", "6"], "k_min=6 is out of range"),
    (["--k-min", "-1"], "k_min=-1 is out of range"),
    (["--dataset", "shapez"], "unknown dataset 'shapez' (did you mean shapes?)"),
    (["--split", "test"], "must not use the test split"),
])
def test_bad_input(tiny_dir, tmp_path, args, message):  # noqa: F811
    out = vtwctl("calibrate", "--model", tiny_dir, "--samples", "1", "--profile-dir", tmp_path, *args)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_repeating_a_calibration_keeps_one_record_per_eta(calibrated, tiny_dir):  # noqa: F811
    _, store, _ = calibrated
    (path,) = store.glob("*.json")
    before = json.loads(path.read_text())["calibrations"]
    out = vtwctl("calibrate", "--model", tiny_dir, "--k-min", "1", "--samples", "4", "--eta", "1,1e-12",
                 "--profile-dir", store, "--json")
    assert out.returncode == 0, out.stderr
    after = json.loads(path.read_text())["calibrations"]
    assert len(before) == len(after) == 2 and [r["eta"] for r in after] == [1e-12, 1.0]
