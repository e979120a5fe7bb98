"""Results files of benchmark runs: JSONL, one record (a JSON object with an ``id``) per line.

Reading is strict about what the file is and lenient only about what a crash leaves behind: a
line that starts a JSON object but does not parse is a torn write (skipped and reported by ``scan``;
a torn last line is cut off before anything is appended, so a resumed file is valid JSONL again),
while a line that is not a JSON object at all (a JSON array, text, CSV), a
record without ``id``, a directory or an unreadable file is a one-line ``VTWError`` naming the file
(and the line). Records are de-duplicated by ``id`` (the first one wins), so two runs that did
write into one file, or a merge of overlapping shards, count every sample once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VTWError
from .files import check_file_target, check_regular, dumps, environment_error, lock


@dataclass
class Scan:
    """What a results file holds: its records (file order, duplicates kept) and the torn lines a crash
    or a full disk left (1-based line numbers; ``tail``: the last line is one, with no newline after it)."""

    records: list[dict] = field(default_factory=list)
    torn: list[int] = field(default_factory=list)
    tail: bool = False

    def notes(self, path: str | Path, tail: bool = True) -> list[str]:
        """One warning per torn line (``tail=False``: but the last one), naming the file and what to do."""
        out = []
        for n in self.torn:
            last = self.tail and n == self.torn[-1]
            if last and not tail:
                continue
            where = "the last line" if last else f"line {n}"
            fix = ("it is removed when the run resumes" if last else
                   f"`vtwctl merge {path} --output CLEAN.jsonl` writes a copy without it")
            out.append(f"{path}: {where} is torn (a write cut short by a crash or a full disk) and is not "
                       f"counted; {fix}")
        return out


def _is_torn(line: str) -> bool:
    """A line a cut-short write leaves: the start of a record that does not parse, or NUL bytes (what some
    file systems leave of a block that was never written)."""
    return line.startswith("{") or line.strip("\x00") == ""


def scan(path: str | Path, missing_ok: bool = True) -> Scan:
    """The records and torn lines of the JSONL file ``path`` (see ``Scan``)."""
    import json

    p = Path(path)
    if not p.exists():
        if missing_ok:
            return Scan()
        raise VTWError(f"results file not found: {p}")
    if p.is_dir():
        raise VTWError(f"{p} is a directory, not a results file (JSONL)")
    check_regular(p, "results file")
    out = Scan()
    try:
        with p.open(encoding="utf-8", newline="") as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line) if line.startswith("{") else None
                except json.JSONDecodeError:
                    rec = None
                if rec is None:
                    if not _is_torn(line):
                        what = "a JSON array" if line.startswith("[") else "not a JSON object"
                        raise VTWError(f"{p} is not a vtwctl results file (JSONL of records): line {n} is {what}")
                    out.torn.append(n)  # the sample is simply not finished
                    out.tail = not raw.endswith("\n")
                    continue
                if not isinstance(rec, dict) or "id" not in rec:
                    raise VTWError(f"{p}: line {n} is a record without an 'id' (not written by vtwctl run)")
                out.records.append(rec)
                out.tail = False
    except UnicodeDecodeError:
        raise VTWError(f"{p} is not a text file (a results file is JSONL)") from None
    except OSError as exc:
        raise VTWError(f"cannot read results file {p}: {exc.strerror or exc}") from None
    return out


def read_records(path: str | Path, missing_ok: bool = True) -> list[dict]:
    """The records of the JSONL file ``path`` in file order (duplicates kept; see ``dedupe``)."""
    return scan(path, missing_ok).records


def dedupe(records: Iterable[dict]) -> list[dict]:
    """One record per id (the first one, except that an answered record wins over a ``skipped`` one), in
    the order ids first appear."""
    out: dict[str, dict] = {}
    for r in records:
        key = str(r["id"])
        if key not in out or (out[key].get("skipped") and not r.get("skipped")):
            out[key] = r
    return list(out.values())


def repair_tail(path: Path) -> bool:
    """Make ``path`` end on a whole line before anything is appended: a last line without its newline is
    kept (the newline added) when it is a whole record, and cut off when it is torn (a crash or a full
    disk mid-write), so the file stays valid JSONL. True when a torn line was removed."""
    import json

    if not path.exists() or not path.stat().st_size:
        return False
    with path.open("r+b") as f:
        end = f.seek(0, os.SEEK_END)
        pos, tail = end, b""
        while pos > 0:  # the bytes after the last newline, read backwards in blocks
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                tail = block[cut + 1:] + tail
                break
            tail = block + tail
        if not tail:
            return False
        try:
            whole = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = False
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(end - len(tail))
        f.flush()
        os.fsync(f.fileno())
    return not whole


def append(path: Path, records: Iterable[dict]) -> None:
    """Append ``records`` to ``path`` (strict JSON, one per line), flushed and fsynced.

    A failed write (a full disk, a file size limit; or an interrupt mid-write) is undone, so the file keeps
    every finished record and stays valid JSONL; a failed write is raised as a ``VTWError`` naming the file
    and the cause."""
    text = "".join(dumps(r) + "\n" for r in records)
    try:
        repair_tail(path)
        size = path.stat().st_size if path.exists() else 0
    except OSError as exc:
        raise VTWError(environment_error(exc, f"cannot write results file {path}")
                       or f"cannot write results file {path}: {exc}") from None
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:  # a full disk, or Ctrl-C/SIGTERM mid-write: take back the partial line
        with contextlib.suppress(OSError):
            os.truncate(path, size)  # (truncating needs no space)
        msg = environment_error(exc, f"cannot write results file {path}") if isinstance(exc, OSError) else None
        if msg is None:
            raise
        raise VTWError(f"{msg}; every finished sample before it is kept: run the same command again to "
                       "resume") from None


def check_target(path: str | Path | None) -> None:
    """``path`` can take results: writable, and either new or an existing results file (checked now,
    before a model loads)."""
    if path is None:
        return
    check_file_target(path, "results file")
    read_records(path)


@contextlib.contextmanager
def locked(path: str | Path | None) -> Iterator[None]:
    """Exclusive use of the results file ``path`` for the block (None: nothing to lock)."""
    if path is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with lock(path, "results file"):
        try:
            yield
        finally:
            if new and path.exists() and path.stat().st_size == 0:  # nothing was written: leave no empty file
                with contextlib.suppress(OSError):
                    path.unlink()
