"""MME (lmms-eval ``mme``): 14 perception / cognition subtasks, two yes/no questions per image.

Prompt: ``question.strip()`` without its " Please answer yes or no." + ``"\\nAnswer the question using a
single word or phrase."`` (lmms-eval default post prompt). Scoring ``lmms-eval``: Otter's
``parse_pred_ans`` (lowercase, dots removed; "yes"/"no"/"y"/"n"; else "yes" or "no" within the first 4
characters); ``lenient``: ``parse_yes_no`` (the same, then a yes/no word in the first sentence).
Metrics (lmms-eval's ``mme_aggregate_results``): per category, the mean over images (``question_id``
is the image file) of acc + acc+ in percent (acc: share of the image's questions right; acc+: 100 when
all are); ``perception`` = sum over the perception categories present, ``cognition`` = sum over the
cognition categories present, ``total`` = both; also ``accuracy`` (per question) and ``accuracy_plus``
(per image).

Only a ``test`` split; calibration uses the ``calib`` pseudo-split: the images (both questions) whose
md5(question_id) % 20 == 0.
"""

from __future__ import annotations

from . import Task
from .common import CALIB_SPLIT, SHORT_POST_PROMPT, fraction, grouped, parse_yes_no, rgb
from .lmms_rules import mme

DATASET_IDS = ("lmms-lab-encoder/MME", "lmms-lab/MME")
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
REPLACE_PROMPT = " Please answer yes or no."


def doc_to_text(doc: dict) -> str:
    question = doc["question"].strip().replace(REPLACE_PROMPT, "")
    return f"{question}\n{SHORT_POST_PROMPT}"


def doc_ids(rows: list[dict]) -> list[str]:
    """``{question_id}#{k}``: the k-th question on that image."""
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        qid = str(row["question_id"])
        out.append(f"{qid}#{seen.get(qid, 0)}")
        seen[qid] = seen.get(qid, 0) + 1
    return out


def _metrics(records: list[dict]) -> dict:
    out: dict[str, float] = {"accuracy": fraction([r["correct"] for r in records])}
    images = [recs for cat in grouped(records, "category").values() for recs in grouped(cat, "question_id").values()]
    out["accuracy_plus"] = fraction([all(r["correct"] for r in recs) for recs in images])
    scores: dict[str, float] = {}
    for cat, recs in grouped(records, "category").items():
        per_image = grouped(recs, "question_id").values()  # lmms-eval asserts 2 per image; --limit may cut one
        total = sum(fraction([r["correct"] for r in im]) * 100.0 + (100.0 if all(r["correct"] for r in im) else 0.0)
                    for im in per_image)
        scores[cat] = total / len(per_image)
        out[f"score_{cat}"] = scores[cat]
    out["perception"] = sum(v for k, v in scores.items() if k in PERCEPTION)
    out["cognition"] = sum(v for k, v in scores.items() if k in COGNITION)
    out["total"] = out["perception"] + out["cognition"]
    return out


TASK = Task(
    name="mme",
    description="MME (lmms-eval mme): yes/no pairs per image, perception/cognition scores (acc + acc+)",
    test_split="test",
    calibration_split=CALIB_SPLIT,
    doc_to_text=doc_to_text,
    doc_to_visual=lambda doc: [rgb(doc["image"])],
    doc_to_target=lambda doc: str(doc["answer"]).lower().strip().replace(".", ""),
    doc_ids=doc_ids,
    doc_to_meta=lambda doc: {"category": doc["category"], "question_id": str(doc["question_id"])},
    parsers={"lmms-eval": lambda sample, output: mme(output), "lenient": lambda sample, output: parse_yes_no(output)},
    score=lambda sample, parsed: parsed == sample.answer,
    aggregation=_metrics,
    generation_kwargs={"max_new_tokens": 16},
    splits=("test", CALIB_SPLIT),
    dataset_ids=DATASET_IDS,
    key_columns=("question_id",),
    columns=("question_id", "question", "answer", "category", "image"),
    calib_key=lambda row: row.get("question_id", row["_row"]),
)
