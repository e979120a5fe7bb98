"""Checks of a task's data before a model loads: the split exists, the data can be read and have the
columns the task reads, and a requested sample count (``--limit``, ``--samples``, ``--index``) fits.

They go through the task's own loading path (``Task.open``: only key columns are read, nothing is
decoded), so they check exactly what the run will read. Loading a 7B model costs minutes; these
checks milliseconds to seconds.
"""

from __future__ import annotations

from .errors import VTWError


def check_split(task, split: str | None) -> str:
    """``split`` (default: the task's test split) must be one of the task's splits."""
    split = split or task.test_split
    if task.splits and split not in task.splits:
        raise VTWError(f"unknown split {split!r} of {task.name}; its splits: {', '.join(task.splits)}")
    return split


def check_data(task, split: str | None, source: str | None = None, need: int | None = None,
               what: str = "--limit", index: int | None = None) -> str:
    """Check ``task``'s ``split`` before loading a model: it exists and can be read (local files with
    the task's columns, or the hub cache), ``need`` samples fit (``what`` names the option) and sample
    ``index`` (0-based) exists. Returns the split."""
    split = check_split(task, split)
    size = len(task.open(split, source))
    if need is not None and need > size:
        raise VTWError(f"{what} {need} is more than the {size} samples of {task.name}/{split}")
    if index is not None and index >= size:
        raise VTWError(f"{what} {index} is past the end of {task.name}/{split} ({size} samples: 0..{size - 1})")
    return split
