"""Benchmarks as small declarative units in a registry, shaped as lmms-eval shapes them.

A ``Task`` names its data (hub ids, newest first; config; splits; the split calibration may use),
how a document becomes a sample (``doc_to_text``, ``doc_to_visual``, ``doc_to_target``; an id and
metadata), how an output is read (``parsers``: one rule per scoring mode, ``lmms-eval`` being
lmms-eval's own rule; ``score``) and how records aggregate (``aggregation``), plus lmms-eval's
``generation_kwargs``. Adding a benchmark is adding one unit to ``REGISTRY`` ("name":
"module:attribute", imported lazily).

Data are read lazily: ``task.open(split)`` returns a ``SampleSet`` that knows every id but decodes
a document's images or video only when that sample is read, so a shard (or a torchrun rank) decodes
only its own samples. ``task.load(split, limit)`` is the eager form (the first ``limit`` samples).
"""

from __future__ import annotations

import difflib
import importlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import VTWError
from ..spec import SCORING_MODES  # noqa: F401  (re-exported: the one list, checked when a RunSpec is built)


@dataclass
class Sample:
    """One question: ``prompt`` is the text before the model's chat template, ``images`` every image
    it shows (in order; ``image`` is the first one, or None), ``video`` frames [T, H, W, 3] or None."""

    id: str
    prompt: str
    answer: str
    image: Any = None
    video: Any = None
    meta: dict = field(default_factory=dict)
    images: list | None = None

    def __post_init__(self) -> None:
        if self.images is None:
            self.images = [self.image] if self.image is not None else []
        elif self.image is None and self.images:
            self.image = self.images[0]


class BadSample(VTWError):
    """A sample whose data cannot be decoded (a corrupt or truncated image cell, an image past Pillow's
    decompression-bomb limit): the user's data, not a bug. ``sample_id`` and ``cause`` say which and why."""

    def __init__(self, sample_id: str, cause: str):
        self.sample_id, self.cause = sample_id, cause
        super().__init__(f"sample {sample_id}: cannot decode its data ({cause}); fix or remove it, or pass "
                         "--skip-bad-samples to record it as skipped and go on")


def _data_errors() -> tuple[type, ...]:
    """What decoding a broken image, parquet cell or video raises (Pillow, zlib, datasets, pyarrow)."""
    import zlib

    errors: list[type] = [OSError, ValueError, SyntaxError, EOFError, zlib.error]
    try:
        from PIL import Image

        errors.append(Image.DecompressionBombError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import pyarrow

        errors.append(pyarrow.ArrowException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
    if type(exc).__name__ == "DecompressionBombError":
        what += " (Pillow's guard against decompression bombs)"
    return what


class SampleSet(Sequence):
    """Samples of one split, decoded on access. ``ids`` are known without decoding anything.

    Selections return new sets over the same rows: ``first(n)`` (lmms-eval's ``--limit``),
    ``sample(n, seed)`` (a seeded random subset, as calibration draws one), ``shard(i, n)`` (every
    n-th sample from i), ``exclude(ids)`` (resume).
    """

    def __init__(self, ids: Sequence[str], make: Callable[[int], Sample], positions: Sequence[int] | None = None,
                 check: Callable[[int], None] | None = None):
        self._all_ids = list(ids)
        self._make = make
        self._check = check
        self._pos = list(range(len(self._all_ids))) if positions is None else list(positions)

    def _with(self, positions: Sequence[int]) -> SampleSet:
        return SampleSet(self._all_ids, self._make, positions, self._check)

    @property
    def ids(self) -> list[str]:
        return [self._all_ids[p] for p in self._pos]

    def __len__(self) -> int:
        return len(self._pos)

    def _decode(self, p: int) -> Sample:
        """Sample ``p``, decoded; data that cannot be decoded are a ``BadSample`` naming it."""
        try:
            return self._make(p)
        except VTWError:
            raise
        except _data_errors() as exc:
            raise BadSample(self._all_ids[p], _cause(exc)) from exc

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self._with(self._pos[j])
        return self._decode(self._pos[j])

    def __iter__(self) -> Iterator[Sample]:
        for p in self._pos:
            yield self._decode(p)

    def decoded(self) -> Iterator[Sample | BadSample]:
        """Every sample decoded, in order, a ``BadSample`` in place of one that cannot be (not raised)."""
        for p in self._pos:
            try:
                yield self._decode(p)
            except BadSample as bad:
                yield bad

    def first(self, n: int | None) -> SampleSet:
        return self if n is None else self._with(self._pos[: max(int(n), 0)])

    def sample(self, n: int, seed: int = 0) -> SampleSet:
        """``n`` samples drawn at random with ``seed`` (all of them when there are fewer), in split order."""
        if n >= len(self._pos):
            return self
        picked = sorted(random.Random(seed).sample(range(len(self._pos)), n))
        return self._with([self._pos[j] for j in picked])

    def shard(self, index: int, count: int) -> SampleSet:
        return self._with(self._pos[index::count])

    def exclude(self, ids) -> SampleSet:
        drop = set(ids)
        return self._with([p for p in self._pos if self._all_ids[p] not in drop])

    def check(self) -> None:
        """Raise ``VTWError`` now if a selected sample cannot be read later (e.g. a missing video file)."""
        if self._check is not None:
            for p in self._pos:
                self._check(p)


@dataclass(frozen=True)
class Task:
    """One benchmark (see the module docstring). Documents are rows of the dataset as dicts (images
    as PIL), with ``_row``, the row's index in its split."""

    name: str
    description: str
    test_split: str
    calibration_split: str  # never the test split
    parsers: Mapping[str, Callable[[Sample, str], str]]  # scoring mode -> output to parsed answer
    score: Callable[[Sample, str], bool]
    aggregation: Callable[[list[dict]], dict]
    doc_to_text: Callable[[dict], str] | None = None
    doc_to_visual: Callable[[dict], list] | None = None
    doc_to_target: Callable[[dict], str] | None = None
    doc_to_id: Callable[[dict], str] | None = None  # reads only ``key_columns`` (and ``_row``)
    doc_to_meta: Callable[[dict], dict] | None = None
    generation_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"max_new_tokens": 16})
    splits: tuple[str, ...] = ()
    dataset_ids: tuple[str, ...] = ()  # hub ids, newest first (old organisations kept as fallbacks)
    dataset_config: Any = None  # a config name, or a function of the hub id
    subdir: str | None = None  # the config's folder in a full local download of the hub repo
    key_columns: tuple[str, ...] = ()  # read undecoded for ids, the calib split and row_filter
    columns: tuple[str, ...] = ()  # required in local data (checked before anything runs)
    calib_key: Callable[[dict], Any] | None = None  # row -> key of the "calib" pseudo-split bucket
    row_filter: Callable[[dict], bool] | None = None
    doc_ids: Callable[[list[dict]], list[str]] | None = None  # ids that depend on several rows (MME)
    lmms_filter: Callable[[str], str] | None = None  # lmms-eval filter_list step, before tag stripping
    judge_parser: Callable[[Sample, str, Any], tuple[str, str]] | None = None  # MMBench's GPT judge
    opener: Callable[..., SampleSet] | None = None  # data that are not rows of a dataset (generated)
    doc_to_video: Callable[[dict, str | None], Any] | None = None  # (doc, source) -> frames [T, H, W, 3]
    video_check: Callable[[dict, str | None], None] | None = None  # (key columns, source): raise if missing

    @property
    def max_new_tokens(self) -> int:
        return int(self.generation_kwargs.get("max_new_tokens", 16))

    @property
    def until(self) -> list[str]:
        until = self.generation_kwargs.get("until") or []
        return [until] if isinstance(until, str) else list(until)

    def open(self, split: str | None = None, source: str | None = None, seed: int = 0) -> SampleSet:
        """Every sample of ``split`` (default: the test split), decoded when read."""
        split = split or self.test_split
        if self.opener is not None:
            return self.opener(split, source, seed)
        from .common import open_rows

        return open_rows(self, split, source)

    def load(self, split: str | None = None, limit: int | None = None, seed: int = 0,
             source: str | None = None) -> list[Sample]:
        """The first ``limit`` samples of ``split``, decoded (``seed`` only matters for generated data)."""
        return list(self.open(split, source, seed).first(limit))

    def parse(self, sample: Sample, output: str, scoring: str = "lmms-eval", judge: Any = None) -> str:
        """The answer ``output`` gives, read as ``scoring`` reads it."""
        return self.process(sample, output, scoring, judge)["parsed"]

    def process(self, sample: Sample, output: str, scoring: str = "lmms-eval", judge: Any = None) -> dict:
        """lmms-eval's pipeline for one output: the task's filter, reasoning tags stripped, the parse
        rule of ``scoring``, the score. Returns ``{"parsed", "correct", "judge"}``."""
        from .lmms_rules import strip_reasoning_tags

        if scoring not in self.parsers:
            raise VTWError(f"--scoring must be one of {', '.join(self.parsers)}, got {scoring!r}")
        text = output or ""
        if scoring == "lmms-eval" and self.lmms_filter is not None:
            text = self.lmms_filter(text)
        text = strip_reasoning_tags(text)
        used = None
        if judge is not None and self.judge_parser is not None and scoring == "lmms-eval":
            parsed, used = self.judge_parser(sample, text, judge)
        else:
            parsed = self.parsers[scoring](sample, text)
        return {"parsed": parsed, "correct": bool(self.score(sample, parsed)), "judge": used}

    def metrics(self, records: list[dict]) -> dict:
        return self.aggregation(records)


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
