"""Hostile input, full disks, broken data and threads, through the installed console script: special files
are refused before anything is read, the environment's and the data's faults are one line and exit 2 (not
"a bug"), torn lines are repaired and reported, and no finished record is lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from console import assert_one_line, batch, script
from test_console import _broken  # an environment whose `vtwctl models` raises what it is given
from vtwctl.errors import VTWError

BIG = ["--model", "llava-1.5-7b"]  # not in this machine's cache: a case that got as far as loading it would say so
NO_RUNAWAY = {"RLIMIT_DATA": 6 << 30}  # a child that reads a device forever fails instead of filling the memory


def _lines(path: Path) -> list[dict]:
    """Every line of a JSONL file, each of which must parse (what jq and pandas need)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _errors(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is width x height (its pixels never decode): enough for Pillow's size guard."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (48, 40), (255, 0, 0)).save(path)
    return path


# -- special files --------------------------------------------------------------------------------
def test_special_files_are_refused_before_anything_is_read(tmp_path, image):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    run = ["run", *BIG, "--dataset", "shapes", "--limit", "8", "--k", "7"]
    cases = [
        ([*run, "--output", "/dev/full"], "results file /dev/full is a character device"),
        ([*run, "--output", "/dev/null"], "results file /dev/null is a character device"),
        ([*run, "--output", fifo], f"results file {fifo} is a pipe (FIFO)"),  # `--output /dev/stdout | cat`
        (["merge", "/dev/full"], "results file /dev/full is a character device"),
        (["merge", fifo], f"results file {fifo} is a pipe (FIFO)"),
        (["run", *BIG, "--image", "/dev/zero", "--prompt", "hi", "--k", "2"], "image /dev/zero is a character device"),
        (["profile", *BIG, "--flops-only", "--csv", "/dev/full"], "CSV file /dev/full is a character device"),
        (["run", *BIG, "--dataset", "shapes", "--k", "2", "--data-dir", "/dev/zero"],
         "dataset file /dev/zero is a character device"),
    ]
    for (_argv, message), res in zip(cases, batch([c for c, _ in cases], timeout=240, limits=NO_RUNAWAY)):
        assert_one_line(res, message)
    piped = script(*run, "--output", "/dev/stdout", timeout=240, limits=NO_RUNAWAY)  # stdout is a pipe here
    assert_one_line(piped, "results file /dev/stdout is a pipe (FIFO)")


# -- the environment's faults ---------------------------------------------------------------------
def test_a_full_disk_anywhere_is_named_not_called_a_bug(tmp_path):
    env = _broken(tmp_path, "OSError(28, 'No space left on device', '/data/store/m.json')")
    res = script("models", env=env)
    assert_one_line(res, "/data/store/m.json: No space left on device (the disk is full")
    env = _broken(tmp_path, "OSError(30, 'Read-only file system', '/data/x')")
    assert_one_line(script("models", env=env), "/data/x: Read-only file system")


def test_a_failed_write_is_taken_back_and_named(tmp_path, monkeypatch):
    from vtwctl import results

    path = tmp_path / "r.jsonl"
    results.append(path, [{"id": "a"}])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the records reached the file, the disk then ran out
    with pytest.raises(VTWError, match=f"cannot write results file {path}: No space left on device"):
        results.append(path, [{"id": "b"}, {"id": "c"}])
    monkeypatch.undo()
    assert path.read_text() == '{"id": "a"}\n'  # the partial append is gone, the finished record kept


def test_a_file_size_limit_mid_run_loses_nothing(tiny_dir, tmp_path):
    """`ulimit -f` (EFBIG; ENOSPC takes the same path): exit 2 naming the file, every finished record kept,
    the file valid JSONL; the rerun resumes without duplicates."""
    out = tmp_path / "r.jsonl"
    args = ["run", "--model", tiny_dir, "--dataset", "shapes", "--k", "2", "--output", out, "--device", "cpu"]
    first = script(*args, "--limit", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    size = out.stat().st_size
    cut = script(*args, "--limit", "8", limits={"RLIMIT_FSIZE": int(3.5 * size)})
    assert cut.returncode == 2, cut.stderr[-2000:]
    assert "Traceback" not in cut.stderr and "internal error" not in cut.stderr
    (line,) = _errors(cut)
    assert f"cannot write results file {out}: File too large" in line and "run the same command again" in line
    kept = _lines(out)
    assert len(kept) == 3 and out.read_text().endswith("\n")
    again = script(*args, "--limit", "8")
    assert again.returncode == 0, again.stderr[-2000:]
    after = _lines(out)
    assert after[:3] == kept and [r["id"] for r in after] == [f"shapes-test-0-{i:06d}" for i in range(8)]


def test_a_full_disk_mid_run_loses_nothing(tiny_dir, tmp_path):
    """A real ENOSPC: the run writes into an 8 KiB tmpfs mounted in a private mount namespace (skipped where
    `unshare -rm` cannot mount one)."""
    import shlex
    import subprocess

    from console import SCRIPT, _env

    small, kept = tmp_path / "small", tmp_path / "kept.jsonl"
    small.mkdir()
    mount = f"mount -t tmpfs -o size=8k tmpfs {shlex.quote(str(small))}"
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "sh", "-c", mount],
                                                     capture_output=True).returncode != 0:
        pytest.skip("no private tmpfs here (unshare -rm + mount)")
    out = small / "r.jsonl"
    args = [*SCRIPT, "run", "--model", tiny_dir, "--dataset", "shapes", "--k", "2", "--limit", "40", "--output", out,
            "--device", "cpu"]
    inner = f"{mount} && {shlex.join(map(str, args))}; rc=$?; cp {out} {kept}; exit $rc"
    res = subprocess.run(["unshare", "-rm", "sh", "-c", inner], capture_output=True, text=True, timeout=600,
                         env=_env(None))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    (line,) = _errors(res)
    assert f"cannot write results file {out}: No space left on device (the disk is full" in line
    recs = _lines(kept)  # whole lines only: the partial record was taken back
    assert 0 < len(recs) < 40 and [r["id"] for r in recs] == [f"shapes-test-0-{i:06d}" for i in range(len(recs))]


def test_an_unwritable_home_names_the_cache_not_the_data(tmp_path):
    data = tmp_path / "data"
    res = script("data", "export", "shapes", data, "--train", "0", "--validation", "0", "--test", "3")
    assert res.returncode == 0, res.stderr
    home = "/proc/nohome"
    env = {"HOME": home, "XDG_CACHE_HOME": f"{home}/.cache", "HF_HOME": f"{home}/.cache/huggingface"}
    res = script("run", *BIG, "--dataset", "shapes", "--k", "2", "--data-dir", data, env=env)
    assert_one_line(res, f"datasets cache {home}/.cache/huggingface/datasets")
    assert "test.parquet: FileNotFoundError" not in res.stderr


def test_a_truncated_weights_file_is_named(tiny_dir, tmp_path, image):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (weights,) = model.glob("*.safetensors")
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    res = script("run", "--model", model, "--image", image, "--prompt", "hi", "--k", "2", "--device", "cpu")
    assert_one_line(res, f"cannot load the weights of {model}: {weights} is corrupt or truncated")


# -- the data's faults ----------------------------------------------------------------------------
def test_an_image_past_pillows_size_guard_is_bad_input(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(14000, 14000))
    res = script("run", *BIG, "--image", big, "--prompt", "hi", "--k", "2")
    assert_one_line(res, f"cannot read image {big}: Image size (196000000 pixels) exceeds limit")


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """The demo benchmark's first 6 test samples as parquet, sample 2's image cell corrupt and sample 4's an
    image past Pillow's size guard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("bad-data")
    res = script("data", "export", "shapes", root, "--train", "0", "--validation", "0", "--test", "6")
    assert res.returncode == 0, res.stderr
    table = pq.read_table(root / "test.parquet")
    cells = table.column("image").to_pylist()
    cells[2] = {"bytes": b"this is not an image", "path": None}
    cells[4] = {"bytes": _png_header(14000, 14000), "path": None}
    i = table.schema.get_field_index("image")
    table = table.set_column(i, table.schema.field(i), pa.array(cells, type=table.schema.field(i).type))
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), root / "test.parquet")
    ids = table.column("id").to_pylist()
    return root, ids


def test_a_corrupt_sample_stops_the_run_naming_it(tiny_dir, tmp_path, bad_data):
    root, ids = bad_data
    out = tmp_path / "r.jsonl"
    res = script("run", "--model", tiny_dir, "--dataset", "shapes", "--data-dir", root, "--k", "2", "--output", out,
                 "--device", "cpu")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    (line,) = _errors(res)
    assert f"sample {ids[2]}: cannot decode its data (UnidentifiedImageError" in line and "--skip-bad-samples" in line
    assert [r["id"] for r in _lines(out)] == ids[:2]  # the samples before it are kept


def test_skip_bad_samples_records_them_and_says_so(tiny_dir, tmp_path, bad_data):
    root, ids = bad_data
    out = tmp_path / "r.jsonl"
    res = script("run", "--model", tiny_dir, "--dataset", "shapes", "--data-dir", root, "--k", "2", "--output", out,
                 "--device", "cpu", "--skip-bad-samples", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert (summary["samples"], summary["skipped"], summary["skipped_ids"]) == (4, 2, [ids[2], ids[4]])
    assert f"warning: 2 samples skipped: their data could not be decoded ({ids[2]}, {ids[4]})" in res.stderr
    recs = {r["id"]: r for r in _lines(out)}
    assert recs[ids[2]]["skipped"] and "UnidentifiedImageError" in recs[ids[2]]["error"]
    assert "DecompressionBombError" in recs[ids[4]]["error"]
    merged = script("merge", out, "--json")
    assert merged.returncode == 0 and json.loads(merged.stdout)["skipped"] == 2


# -- torn lines -----------------------------------------------------------------------------------
def test_torn_lines_are_reported_and_repaired(tiny_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["run", "--model", tiny_dir, "--dataset", "shapes", "--k", "2", "--output", out, "--device", "cpu"]
    assert script(*args, "--limit", "4").returncode == 0
    whole = out.read_text()
    last = whole.splitlines()[-1]
    out.write_text(whole[: len(whole) - len(last) // 2 - 1])  # a crash cut the last record short
    merged = script("merge", out, "--json")
    assert merged.returncode == 0 and json.loads(merged.stdout)["samples"] == 3
    assert f"warning: {out}: the last line is torn" in merged.stderr
    assert "the files hold 3 of the run's 4 samples: the run is not finished" in merged.stderr
    res = script(*args, "--limit", "6")  # resumes: the torn tail is cut off before anything is appended
    assert res.returncode == 0, res.stderr[-2000:]
    assert "removed a torn last line" in res.stderr
    assert [r["id"] for r in _lines(out)] == [f"shapes-test-0-{i:06d}" for i in range(6)]
    # a torn fragment inside a file (an older vtwctl's resume left it there): named, skipped, merged away
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join([*lines[:2], lines[2][:40] + "\n", *lines[3:]]))
    clean = tmp_path / "clean.jsonl"
    merged = script("merge", out, "--output", clean, "--json")
    assert merged.returncode == 0 and json.loads(merged.stdout)["samples"] == 5
    assert f"warning: {out}: line 3 is torn" in merged.stderr
    assert len(_lines(clean)) == 5


# -- locale ---------------------------------------------------------------------------------------
def test_a_c_locale_answers_and_reports(tiny_dir, tmp_path, image):
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    res = script("run", "--model", tiny_dir, "--image", image, "--prompt", "é ?", "--k", "2", "--max-new-tokens", "2",
                 "--device", "cpu", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    # a bug under that locale, with a non-ASCII argument: one line, and the traceback file is written whole
    env = {**env, **_broken(tmp_path, "RuntimeError('boom')")}
    res = script("models", "--calibration-dir", tmp_path / "é", env=env)
    assert_one_line(res, "internal error", code=1)
    saved = Path(res.stderr.split("traceback saved to ")[1].split()[0])
    text = saved.read_text(encoding="utf-8")
    assert "RuntimeError: boom" in text and "models" in text


# -- store permissions ----------------------------------------------------------------------------
def test_store_files_follow_the_umask(tiny_dir, tmp_path):
    store = tmp_path / "store"
    res = script("calibrate", "--model", tiny_dir, "--samples", "1", "--k-min", "1", "--calibration-dir", store,
                 "--device", "cpu", umask=0o022)
    assert res.returncode == 0, res.stderr[-2000:]
    (saved,) = store.glob("*.json")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o644  # teammates on a shared store can read it
    os.chmod(saved, 0o664)
    from vtwctl import records

    records.save_record("other", {"dataset": "d", "k": 1}, store)
    records.save_record(json.loads(saved.read_text())["model"], {"dataset": "d", "k": 2}, store)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o664  # a rewrite keeps the file's own mode


# -- --k auto without a record --------------------------------------------------------------------
def test_k_auto_without_a_record_is_refused_as_run_dataset_refuses_it(tiny_dir, tmp_path, image):
    store = tmp_path / "empty"
    res = script("run", "--model", tiny_dir, "--image", image, "--prompt", "hi", "--k", "auto",
                 "--calibration-dir", store)
    assert_one_line(res, f"--k auto: no calibration record for {tiny_dir}")
    res = script("run", "--model", tiny_dir, "--image", image, "--prompt", "hi", "--max-new-tokens", "2",
                 "--calibration-dir", store, "--device", "cpu")  # no --k: the stock model, said on stderr
    assert res.returncode == 0 and "running without withdrawal" in res.stderr


# -- noise ----------------------------------------------------------------------------------------
def test_stderr_holds_vtwctls_own_words(tmp_path, tiny_dir, image):
    res = script("data", "export", "shapes", tmp_path / "d", "--train", "2", "--validation", "2", "--test", "2")
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().startswith("wrote ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "test.parquet").write_bytes(b"")
    res = script("run", *BIG, "--dataset", "shapes", "--k", "2", "--data-dir", tmp_path / "zero")
    assert_one_line(res, f"cannot read {tmp_path / 'zero' / 'test.parquet'}")
    res = script("run", "--model", tiny_dir, "--image", image, "--prompt", "hi", "--k", "2", "--device", "cpu",
                 "--attn-implementation", "flash_attention_2")
    assert_one_line(res, f"cannot load {tiny_dir}")


# -- what a person sees ---------------------------------------------------------------------------
def test_answers_and_timings_say_what_they_are(tmp_path):
    res = script("run", "--example", "3", "--k", "7", "--max-new-tokens", "3", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert isinstance(out["correct"], bool) and out["expected"]
    piped = script("run", "--example", "3", "--k", "7", "--max-new-tokens", "3")  # stdout is a pipe: the answer alone
    assert piped.stdout.strip() == out["answer"]
    verdict = "correct" if out["correct"] else "wrong"
    assert f"{verdict} under the shapes task's scoring (expected {out['expected']!r}" in piped.stderr
    both = script("run", "--example", "3", "--k", "7", "--max-new-tokens", "2", "--compare")
    assert both.returncode == 0 and "timings: one run each, after one untimed warm-up run of each" in both.stderr
    prof = script("profile", "--k", "4", "--repeats", "1", "--max-repeats", "1", "--max-new-tokens", "2",
                  "--method", "stock,vtw")
    assert prof.returncode == 0, prof.stderr
    assert "timings: medians of 1 repeats per row after 1 warm-up round(s)" in prof.stderr
    assert "--max-repeats" in script("profile", "--help").stdout
