"""The demo benchmark "shapes" (generated, so it needs no download; ``--data-dir`` reads an export).

Its own lenient scoring (``demo.shapes.score``) in both scoring modes: it is not an lmms-eval task.
"""

from __future__ import annotations

from . import Sample, SampleSet, Task
from .common import fraction, grouped_accuracy


def _sample(row: dict) -> Sample:
    return Sample(id=row["id"], prompt=row["question"], answer=row["answer"], image=row["image"],
                  meta={"format": row["format"], "kind": row["kind"], "chance": row["chance"]})


def _open(split: str, source: str | None = None, seed: int = 0) -> SampleSet:
    from ..demo import shapes

    if source is not None:
        from .common import open_dataset

        ds = open_dataset((), None, split, source, name="shapes",
                          columns=("id", "image", "question", "answer", "format", "kind", "chance"))
        return SampleSet(list(ds["id"]), lambda i: _sample(ds[i]))
    if split not in shapes.SPLIT_SIZES:
        from ..errors import VTWError

        raise VTWError(f"shapes has no split {split!r}; splits: {', '.join(shapes.SPLIT_SIZES)}")
    n = shapes.SPLIT_SIZES[split]
    return SampleSet([shapes.sample_id(split, i, seed) for i in range(n)],
                     lambda i: _sample(shapes.make_sample(split, i, seed)))


def _parse(sample: Sample, output: str) -> str:
    return output.strip()


def _score(sample: Sample, parsed: str) -> bool:
    from ..demo import shapes

    return shapes.score(sample.meta["format"], parsed, sample.answer)


def _metrics(records: list[dict]) -> dict:
    chance: dict[str, list[float]] = {}
    for r in records:
        chance.setdefault(r["meta"]["format"], []).append(float(r["meta"]["chance"]))
    out: dict = {"accuracy": fraction([r["correct"] for r in records])}
    for key, value in grouped_accuracy(records, "format").items():
        fmt = key[len("accuracy_"):]
        out[key] = value
        out[f"chance_{fmt}"] = sum(chance[fmt]) / len(chance[fmt])
    if records:
        out["chance"] = sum(float(r["meta"]["chance"]) for r in records) / len(records)
    return out


TASK = Task(
    name="shapes",
    description="coloured shapes: multiple choice (SQA-IMG format), yes/no (POPE style), short answers",
    test_split="test",
    calibration_split="validation",
    parsers={"lmms-eval": _parse, "lenient": _parse},
    score=_score,
    aggregation=_metrics,
    generation_kwargs={"max_new_tokens": 4},
    splits=("train", "validation", "test"),
    opener=_open,
)
