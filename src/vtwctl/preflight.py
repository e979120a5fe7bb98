"""Checks of a task's data before a model loads: the split exists, local parquet files have the
columns the task reads, and a requested sample count (``--limit``, ``--samples``, ``--index``) fits
in the split.

Reading parquet metadata costs milliseconds; loading a 7B model costs minutes, so the commands run
these checks first. ``COLUMNS`` lists the columns each task's loader reads unconditionally (what a
``KeyError`` would hit later); a task not listed is not column-checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import VTWError

# columns each task's row loader reads with row[...] (tasks/*.py); optional ones (row.get) are not listed
COLUMNS: dict[str, tuple[str, ...]] = {
    "shapes": ("id", "image", "question", "answer", "format", "kind", "chance"),
    "sqa": ("question", "choices", "answer"),
    "ai2d": ("question", "options", "answer"),
    "mmmu": ("id", "question", "question_type", "answer"),
    "mmbench": ("index", "question"),
    "pope": ("question", "answer"),
    "mme": ("question_id", "question", "answer", "category"),
    "videomme": ("videoID", "question_id", "question", "options", "answer"),
}
# the config folder a full hub download of the dataset has (read instead of the root when present)
SUBDIRS = {"sqa": "ScienceQA-IMG", "mmbench": "en", "videomme": "videomme"}
CALIB_SPLIT = "calib"  # pseudo-split drawn from the test split's rows (tasks.common)


def check_split(task, split: str | None) -> str:
    """``split`` (default: the task's test split) must be one of the task's splits."""
    split = split or task.test_split
    if task.splits and split not in task.splits:
        raise VTWError(f"unknown split {split!r} of {task.name}; its splits: {', '.join(task.splits)}")
    return split


def _local_source(task, source: str | None) -> Path | None:
    if source is None:
        root = os.environ.get("VTWCTL_DATA_DIR")
        if root and task.name != "shapes" and (Path(root).expanduser() / task.name).exists():
            return Path(root).expanduser() / task.name
        return None
    p = Path(str(source)).expanduser()
    if p.exists() or str(source).startswith((".", "/", "~")) or str(source).endswith(".parquet"):
        if not p.exists():
            raise VTWError(f"dataset path not found: {source}")
        return p
    return None  # a hub dataset id


def parquet_files(task, split: str, source: Path) -> list[Path]:
    """The parquet files a task reads for ``split`` from a local file or directory."""
    if source.is_file():
        return [source]
    sub = SUBDIRS.get(task.name)
    root = source / sub if sub and (source / sub).is_dir() else source
    for s in ([split, "test"] if split == CALIB_SPLIT else [split]):
        files = sorted({*root.glob(f"{s}.parquet"), *root.glob(f"{s}-*.parquet"), *root.glob(f"data/{s}-*.parquet"),
                        *root.glob(f"*/{s}-*.parquet"), *root.glob(f"{s}/*.parquet")})
        if files:
            return files
    raise VTWError(f"no parquet files for split {split!r} in {source}")


def _schema_and_rows(path: Path) -> tuple[list[str], int]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        return list(meta.schema.to_arrow_schema().names), int(meta.num_rows)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VTWError(f"{path} is not a readable parquet file: {first}") from None


def split_size(task, split: str, source: str | None = None) -> int | None:
    """Rows in ``split`` (an upper bound for filtered or pseudo-splits), or None if unknown before loading."""
    local = _local_source(task, source)
    if local is None:
        if task.name == "shapes" and source is None:
            from .demo.shapes import SPLIT_SIZES

            return SPLIT_SIZES.get(split)
        return None
    total = 0
    for f in parquet_files(task, split, local):
        names, rows = _schema_and_rows(f)
        missing = [c for c in COLUMNS.get(task.name, ()) if c not in names]
        if missing:
            raise VTWError(f"{f} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} that "
                           f"{task.name} reads (it has: {', '.join(names) or 'none'})")
        total += rows
    return total


def check_data(task, split: str | None, source: str | None = None, need: int | None = None,
               what: str = "--limit", index: int | None = None) -> str:
    """Check ``task``'s ``split`` before loading a model: it exists, local files have the task's
    columns, ``need`` samples fit (``what`` names the option) and sample ``index`` (0-based) exists.
    Returns the split."""
    split = check_split(task, split)
    size = split_size(task, split, source)
    if size is not None and need is not None and need > size:
        raise VTWError(f"{what} {need} is more than the {size} samples of {task.name}/{split}")
    if size is not None and index is not None and index >= size:
        raise VTWError(f"{what} {index} is past the end of {task.name}/{split} ({size} samples: 0..{size - 1})")
    return split
