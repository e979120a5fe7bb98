"""Benchmarks as small declarative units in a registry (in the spirit of lmms-eval).

A ``Task`` says where its data comes from (a generator or a dataset id), which split is the test
split and which one calibration may use, how to build each sample's prompt and visual input, how to
score an answer and which metrics to report. Adding a benchmark is adding one unit to ``REGISTRY``
("name": "module:attribute", imported lazily).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import VTWError


@dataclass
class Sample:
    id: str
    prompt: str  # the question as the model sees it, before the chat template
    answer: str
    image: Any = None  # PIL image or None
    video: Any = None  # frames [T, H, W, 3] or None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One benchmark.

    ``load(split, limit, seed, source)`` returns samples in a deterministic order (``limit`` takes
    the first ones; ``seed`` only matters for generated data); ``source`` overrides where the data
    comes from (a hub id, a local directory or parquet file(s) of the same schema).
    ``parse(sample, output)`` turns the model's raw text into the answer form (a letter, yes/no,
    a word); ``score(sample, parsed)`` says if it is right; ``metrics(records)`` aggregates
    records (dicts with "id", "parsed", "answer", "correct", "meta") into named metrics, always
    including ``accuracy`` (a fraction) for multiple-choice and yes/no tasks.
    """

    name: str
    description: str
    test_split: str
    calibration_split: str  # never the test split
    load: Callable[..., list[Sample]]
    parse: Callable[[Sample, str], str]
    score: Callable[[Sample, str], bool]
    metrics: Callable[[list[dict]], dict]
    max_new_tokens: int = 8
    splits: tuple[str, ...] = ()
    dataset_ids: tuple[str, ...] = ()  # hub ids, newest first (old organisations kept)


REGISTRY: dict[str, str] = {
    "shapes": "vtwctl.tasks.shapes:TASK",
    "sqa": "vtwctl.tasks.sqa:TASK",
    "ai2d": "vtwctl.tasks.ai2d:TASK",
    "mmmu": "vtwctl.tasks.mmmu:TASK",
    "mmbench": "vtwctl.tasks.mmbench:TASK",
    "pope": "vtwctl.tasks.pope:TASK",
    "mme": "vtwctl.tasks.mme:TASK",
    "videomme": "vtwctl.tasks.videomme:TASK",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> Task:
    """The task called ``name``; a clear error with suggestions otherwise."""
    key = (name or "").strip().lower()
    if key not in REGISTRY:
        close = difflib.get_close_matches(key, REGISTRY, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise VTWError(f"unknown dataset {name!r}{hint}; known: {', '.join(names())}")
    module, attr = REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), attr)


def accuracy_by(records: list[dict], key: str, chance: dict[str, float] | None = None) -> dict:
    """Overall accuracy and accuracy per ``meta[key]`` group (with its chance level if given)."""
    out: dict[str, Any] = {"accuracy": sum(r["correct"] for r in records) / len(records) if records else 0.0}
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(str(r["meta"].get(key)), []).append(bool(r["correct"]))
    for g, vals in sorted(groups.items()):
        out[f"accuracy_{g}"] = sum(vals) / len(vals)
        if chance and g in chance:
            out[f"chance_{g}"] = chance[g]
    return out


def load_parquet_rows(source: str, split: str, limit: int | None = None) -> list[dict]:
    """Rows of ``split`` from a local parquet file, or a directory holding ``{split}.parquet`` or
    ``{split}-*.parquet`` / ``data/{split}-*.parquet`` files (the layout of hub dataset repos).

    Image columns come back as PIL images (decoded by ``datasets``).
    """
    from pathlib import Path

    p = Path(source).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted({*p.glob(f"{split}.parquet"), *p.glob(f"{split}-*.parquet"), *p.glob(f"data/{split}-*.parquet"),
                        *p.glob(f"*/{split}-*.parquet"), *p.glob(f"{split}/*.parquet")})
        if not files:
            raise VTWError(f"no parquet files for split {split!r} in {source}")
    else:
        raise VTWError(f"dataset path not found: {source}")
    import datasets

    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return list(ds)
