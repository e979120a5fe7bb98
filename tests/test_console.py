"""The installed console script: exit codes, one-line errors, help, version, bugs, signals, the lock
on --output, and which stream gets what."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from console import assert_one_line, script, start
from vtwctl.evaluate import read_records


@pytest.mark.parametrize("args,message", [
    (["run", "--foo"], "No such option"),
    (["nope"], "No such command 'nope'"),
    (["merge"], "Missing argument"),
    (["profile", "--repeats", "abc"], "Invalid value for '--repeats'"),
    (["run", "--limit", "0"], "Invalid value for '--limit'"),
    (["run", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["run", "--max-new-tokens", "0"], "Invalid value for '--max-new-tokens'"),
    (["profile", "--flops-only", "--vision-tokens", "-5"], "Invalid value for '--vision-tokens'"),
    (["calibrate", "--samples", "0"], "Invalid value for '--samples'"),
])
def test_usage_errors_are_one_line_exit_2(args, message):
    res = script(*args)
    assert_one_line(res, message)
    assert res.stderr.startswith("error: ")


def test_no_command_prints_help_and_version():
    for args in ([], ["data"]):
        res = script(*args)
        assert res.returncode == 0, res.stderr
        assert "Usage" in res.stdout and "Traceback" not in res.stdout + res.stderr
    assert "export" in script("data").stdout
    res = script("--version")
    assert res.returncode == 0 and res.stdout.strip() == "vtwctl 0.1.0", (res.stdout, res.stderr)


def _broken(tmp_path: Path, exc: str) -> dict:
    """Environment whose interpreter raises ``exc`` inside `vtwctl models` (a stand-in for a bug)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import vtwctl.profiles as p\n"
        f"def names():\n    raise {exc}\n"
        "p.names = names\n")
    return {"PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_a_bug_is_exit_1_with_the_traceback_saved(tmp_path):
    env = _broken(tmp_path, "RuntimeError('boom: an internal failure')")
    res = script("models", env=env)
    assert_one_line(res, "internal error", code=1)
    saved = re.search(r"traceback saved to (\S+)", res.stderr).group(1)
    text = Path(saved).read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text and "models" in text
    assert Path(saved).parent == tmp_path / "cache" / "vtwctl" / "crashes"
    debug = script("--debug", "models", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "boom" in debug.stderr
    # a ValueError from the library or torch is a bug too, not "bad input" (it used to be exit 2)
    res = script("models", env=_broken(tmp_path, "ValueError('shape mismatch')"))
    assert_one_line(res, "internal error", code=1)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for(cond, proc, timeout=240.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def test_signals_lock_resume_and_progress_lines(tiny_dir, tmp_path):
    """SIGTERM -> 143 and SIGINT -> 130 with every finished sample kept; a second run on the same
    --output is refused at once; the resumed run continues; progress goes to stderr as plain lines."""
    out = tmp_path / "run.jsonl"
    args = ["run", "--model", tiny_dir, "--dataset", "shapes", "--k", "2", "--output", out, "--device", "cpu"]
    env = {"VTWCTL_PROGRESS_EVERY": "1"}
    first = start(*args, env=env)
    _wait_for(lambda: _lines(out) >= 3, first)
    other = script(*args, "--limit", "5", env=env)  # the same output while the first run writes it
    assert_one_line(other, "in use by another vtwctl process")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and f"finished samples are in {out}" in err
    assert "Traceback" not in err
    # plain progress lines for a log (stderr is a pipe here), one per sample
    counts = [int(m) for m in re.findall(r"^shapes K=2: (\d+)/600 samples", err, flags=re.M)]
    assert counts[:3] == [0, 1, 2] and "\x1b[" not in err
    kept = read_records(out)
    assert len(kept) >= 3 and len({r["id"] for r in kept}) == len(kept)

    second = start(*args, env=env)  # resumes
    _wait_for(lambda: _lines(out) >= len(kept) + 3, second)
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 130, err[-2000:]
    assert "interrupted by SIGINT" in err
    counts = [int(m) for m in re.findall(r"^shapes K=2: (\d+)/600 samples", err, flags=re.M)]
    assert counts[0] == len(kept)  # it started from the finished samples, not from 0
    after = read_records(out)
    assert after[: len(kept)] == kept  # nothing finished was lost or redone
    assert len(after) >= len(kept) + 3 and len({r["id"] for r in after}) == len(after)
    assert [r["id"] for r in after] == [f"shapes-test-0-{i:06d}" for i in range(len(after))]


def test_models_table_goes_to_stdout(tmp_path):
    res = script("models", env={"VTWCTL_PROFILE_DIR": tmp_path})
    assert res.returncode == 0, res.stderr
    assert "demo" in res.stdout and "llava-1.5-7b" in res.stdout and res.stderr == ""
    js = script("models", "--json", env={"VTWCTL_PROFILE_DIR": tmp_path})
    assert {p["name"] for p in json.loads(js.stdout)} >= {"demo", "llava-1.5-7b"}
