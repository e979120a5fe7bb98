"""POPE (lmms-eval ``pope``): object hallucination yes/no questions on COCO images.

Prompt: ``question.strip() + "\\nAnswer the question using a single word or phrase."``.
Scoring ``lmms-eval``: the answer lowercased and stripped must be exactly "yes" or "no" ("Yes." and
"Yes, there is a dog." are neither); ``lenient``: ``parse_yes_no`` (MME's rule, then a yes/no word).
An answer that is neither counts as neither a yes nor a no prediction in precision / recall / F1.
Metrics (lmms-eval's aggregations, "yes" is the positive class): accuracy, precision, recall, F1,
yes_ratio (the share of "yes" *ground truth*, as lmms-eval computes it), plus pred_yes_ratio (the
share of "yes" predictions, the POPE paper's yes-ratio); each overall and per category
(adversarial / popular / random).

Only a ``test`` split; calibration uses the ``calib`` pseudo-split (test rows whose md5(id) % 20 == 0).
"""

from __future__ import annotations

from . import Task
from .common import CALIB_SPLIT, SHORT_POST_PROMPT, gold, grouped, parse_yes_no, rgb
from .lmms_rules import pope

DATASET_IDS = ("lmms-lab-encoder/POPE", "lmms-lab/POPE")
CATEGORIES = ("adversarial", "popular", "random")


def doc_to_meta(doc: dict) -> dict:
    return {"category": doc.get("category"), "question_id": str(doc.get("question_id")),
            "image_source": doc.get("image_source")}


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
    for cat, recs in grouped(records, "category").items():
        for k, v in binary_metrics(recs).items():
            out[f"{k}_{cat}"] = v
    return out


TASK = Task(
    name="pope",
    description="POPE hallucination (lmms-eval pope): yes/no, accuracy/precision/recall/F1 per category",
    test_split="test",
    calibration_split=CALIB_SPLIT,
    doc_to_text=lambda doc: f"{doc['question'].strip()}\n{SHORT_POST_PROMPT}",
    doc_to_visual=lambda doc: [rgb(doc["image"])],
    doc_to_target=lambda doc: str(doc["answer"]).lower().strip(),
    doc_to_id=lambda row: str(row["id"]) if row.get("id") is not None else f"pope-{row['_row']}",
    doc_to_meta=doc_to_meta,
    parsers={"lmms-eval": lambda sample, output: pope(output), "lenient": lambda sample, output: parse_yes_no(output)},
    score=lambda sample, parsed: parsed == sample.answer,
    aggregation=_metrics,
    generation_kwargs={"max_new_tokens": 128},
    splits=("test", CALIB_SPLIT),
    dataset_ids=DATASET_IDS,
    key_columns=("id",),
    columns=("question", "answer", "image"),
    calib_key=lambda row: row.get("id", row["_row"]),
)
