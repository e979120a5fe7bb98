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
    name: str
    description: str
    test_split: str
    calibration_split: str  # never the test split
    load: Callable[[str, int | None, int], list[Sample]]  # (split, limit, seed) -> samples
    score: Callable[[Sample, str], bool]  # is the model's output right?
    metrics: Callable[[list[dict]], dict]  # records with "correct" and "meta" -> metric dict
    max_new_tokens: int = 8
    splits: tuple[str, ...] = ()


REGISTRY: dict[str, str] = {
    "shapes": "vtwctl.tasks.shapes:TASK",
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
