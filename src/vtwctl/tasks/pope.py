"""POPE (lmms-eval ``pope``): object hallucination yes/no questions on COCO images.

Prompt: ``question.strip() + "\\nAnswer the question using a single word or phrase."``.
Parsing: yes / no / other (``common.parse_yes_no``: lmms-eval's MME rule, then LLaVA's POPE rule); lmms-eval
itself compares the lowercased raw output with the answer, which gives the same result for answers
like "Yes" / "No." and credits messy answers ("Yes, there is a dog.") that exact match would drop.
Metrics (lmms-eval's aggregations): accuracy, precision, recall, F1 ("yes" is the positive class;
"other" counts as neither a yes nor a no prediction), yes_ratio (the share of "yes" *ground truth*, as
lmms-eval computes it) and pred_yes_ratio (the share of "yes" predictions, the POPE paper's yes-ratio);
each overall and per category (adversarial / popular / random).

Only a ``test`` split; calibration uses the ``calib`` pseudo-split (test rows whose md5(id) % 20 == 0).
"""

from __future__ import annotations

from . import Sample, Task
from .common import CALIB_SPLIT, SHORT_POST_PROMPT, gold, load_rows, parse_yes_no, rgb

DATASET_IDS = ("lmms-lab/POPE",)
CATEGORIES = ("adversarial", "popular", "random")


def build_prompt(row: dict) -> str:
    return f"{row['question'].strip()}\n{SHORT_POST_PROMPT}"


def to_sample(row: dict) -> Sample:
    rid = row.get("id")
    return Sample(
        id=str(rid) if rid is not None else f"pope-{row['_row']}",
        prompt=build_prompt(row),
        answer=str(row["answer"]).lower().strip(),
        image=rgb(row.get("image")),
        meta={"category": row.get("category"), "question_id": str(row.get("question_id")),
              "image_source": row.get("image_source")},
    )


def _load(split: str, limit: int | None = None, seed: int = 0, source: str | None = None) -> list[Sample]:
    rows = load_rows(DATASET_IDS, None, split, limit, source, name="pope", key_columns=("id",),
                     calib_key=lambda row, i: row.get("id", i))
    return [to_sample(row) for row in rows]


def _parse(sample: Sample, output: str) -> str:
    return parse_yes_no(output)


def _score(sample: Sample, parsed: str) -> bool:
    return parsed == sample.answer


def binary_metrics(records: list[dict]) -> dict[str, float]:
    """accuracy, precision, recall, f1, yes_ratio (ground truth), pred_yes_ratio of yes/no records."""
    n = len(records)
    gts = [gold(r) for r in records]
    tp = sum(1 for r, g in zip(records, gts) if g == "yes" and r["parsed"] == "yes")
    fp = sum(1 for r, g in zip(records, gts) if g == "no" and r["parsed"] == "yes")
    fn = sum(1 for r, g in zip(records, gts) if g == "yes" and r["parsed"] == "no")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    gt_yes = sum(1 for g in gts if g == "yes")
    gt_no = sum(1 for g in gts if g == "no")
    return {
        "accuracy": sum(bool(r["correct"]) for r in records) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": gt_yes / (gt_yes + gt_no) if gt_yes + gt_no else 0.0,
        "pred_yes_ratio": sum(1 for r in records if r["parsed"] == "yes") / n if n else 0.0,
    }


def _metrics(records: list[dict]) -> dict:
    out: dict[str, float] = dict(binary_metrics(records))
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r["meta"].get("category")), []).append(r)
    for cat, recs in sorted(groups.items()):
        for k, v in binary_metrics(recs).items():
            out[f"{k}_{cat}"] = v
    return out


TASK = Task(
    name="pope",
    description="POPE hallucination (lmms-eval pope): yes/no, accuracy/precision/recall/F1 per category",
    test_split="test",
    calibration_split=CALIB_SPLIT,
    load=_load,
    parse=_parse,
    score=_score,
    metrics=_metrics,
    max_new_tokens=16,
    splits=("test", CALIB_SPLIT),
    dataset_ids=DATASET_IDS,
)
