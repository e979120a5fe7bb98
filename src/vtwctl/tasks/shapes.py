"""The demo benchmark "shapes" (generated, so it needs no download)."""

from __future__ import annotations

from . import Sample, Task, accuracy_by


def _load(split: str, limit: int | None = None, seed: int = 0, source: str | None = None) -> list[Sample]:
    from ..demo import shapes

    if source is not None:
        from . import load_parquet_rows

        rows = load_parquet_rows(source, split, limit)
        return [Sample(id=r["id"], prompt=r["question"], answer=r["answer"], image=r["image"],
                       meta={"format": r["format"], "kind": r["kind"], "chance": r["chance"]}) for r in rows]
    rows = shapes.generate(split, limit, seed)
    return [Sample(id=r["id"], prompt=r["question"], answer=r["answer"], image=r["image"],
                   meta={"format": r["format"], "kind": r["kind"], "chance": r["chance"]}) for r in rows]


def _parse(sample: Sample, output: str) -> str:
    return output.strip()


def _score(sample: Sample, parsed: str) -> bool:
    from ..demo import shapes

    return shapes.score(sample.meta["format"], parsed, sample.answer)


def _metrics(records: list[dict]) -> dict:
    chance: dict[str, list[float]] = {}
    for r in records:
        chance.setdefault(r["meta"]["format"], []).append(float(r["meta"]["chance"]))
    mean_chance = {k: sum(v) / len(v) for k, v in chance.items()}
    out = accuracy_by(records, "format", mean_chance)
    if records:
        out["chance"] = sum(float(r["meta"]["chance"]) for r in records) / len(records)
    return out


TASK = Task(
    name="shapes",
    description="coloured shapes: multiple choice (SQA-IMG format), yes/no (POPE style), short answers",
    test_split="test",
    calibration_split="validation",
    load=_load,
    parse=_parse,
    score=_score,
    metrics=_metrics,
    max_new_tokens=4,
    splits=("train", "validation", "test"),
)
