"""Results files of benchmark runs: JSONL, one record (a JSON object with an ``id``) per line.

Reading is strict about what the file is and lenient only about what a crash leaves behind: a
line that starts a JSON object but does not parse is a torn write (skipped; ``append`` starts a
fresh line after it), while a line that is not a JSON object at all (a JSON array, text, CSV), a
record without ``id``, a directory or an unreadable file is a one-line ``VTWError`` naming the file
(and the line). Records are de-duplicated by ``id`` (the first one wins), so two runs that did
write into one file, or a merge of overlapping shards, count every sample once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import VTWError
from .files import check_file_target, dumps, lock


def read_records(path: str | Path, missing_ok: bool = True) -> list[dict]:
    """The records of the JSONL file ``path`` in file order (duplicates kept; see ``dedupe``)."""
    import json

    p = Path(path)
    if not p.exists():
        if missing_ok:
            return []
        raise VTWError(f"results file not found: {p}")
    if p.is_dir():
        raise VTWError(f"{p} is a directory, not a results file (JSONL)")
    out = []
    try:
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if not line.startswith("{"):
                    what = "a JSON array" if line.startswith("[") else "not a JSON object"
                    raise VTWError(f"{p} is not a vtwctl results file (JSONL of records): line {n} is {what}")
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn write (a crash mid-line): the sample is simply not finished
                if not isinstance(rec, dict) or "id" not in rec:
                    raise VTWError(f"{p}: line {n} is a record without an 'id' (not written by vtwctl run)")
                out.append(rec)
    except UnicodeDecodeError:
        raise VTWError(f"{p} is not a text file (a results file is JSONL)") from None
    except OSError as exc:
        raise VTWError(f"cannot read results file {p}: {exc.strerror or exc}") from None
    return out


def dedupe(records: Iterable[dict]) -> list[dict]:
    """One record per id (the first one), in order."""
    seen: set[str] = set()
    out = []
    for r in records:
        key = str(r["id"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def append(path: Path, records: Iterable[dict]) -> None:
    """Append ``records`` to ``path`` (strict JSON, one per line), flushed and fsynced."""
    torn = False
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with path.open("a") as f:
        if torn:  # a crash mid-write left a partial line: start on a fresh one
            f.write("\n")
        for r in records:
            f.write(dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
