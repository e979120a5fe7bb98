"""MME (lmms-eval ``mme``): 14 perception / cognition subtasks, two yes/no questions per image.

Prompt: ``question.strip()`` without its " Please answer yes or no." + ``"\\nAnswer the question using a
single word or phrase."`` (lmms-eval default post prompt). Parsing: lmms-eval's ``parse_pred_ans`` (from
Otter), extended with LLaVA's POPE rule (``common.parse_yes_no``).
Metrics (lmms-eval's ``mme_aggregate_results``): per category, the mean over images (``question_id``
is the image file) of acc + acc+ in percent (acc: share of the image's questions right; acc+: 100 when
all are); ``perception`` = sum over the 10 perception categories, ``cognition`` = sum over the 4
cognition categories, ``total`` = both; also ``accuracy`` (per question) and ``accuracy_plus`` (per image).

Only a ``test`` split; calibration uses the ``calib`` pseudo-split: the images (both questions) whose
md5(question_id) % 20 == 0.
"""

from __future__ import annotations

from . import Sample, Task
from .common import CALIB_SPLIT, SHORT_POST_PROMPT, load_rows, parse_yes_no, rgb

DATASET_IDS = ("lmms-lab/MME",)
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
REPLACE_PROMPT = " Please answer yes or no."


def build_prompt(row: dict) -> str:
    question = row["question"].strip().replace(REPLACE_PROMPT, "")
    return f"{question}\n{SHORT_POST_PROMPT}"


def _load(split: str, limit: int | None = None, seed: int = 0, source: str | None = None) -> list[Sample]:
    rows = load_rows(DATASET_IDS, None, split, limit, source, name="mme", key_columns=("question_id",),
                     calib_key=lambda row, i: row.get("question_id", i))
    seen: dict[str, int] = {}
    samples = []
    for row in rows:
        qid = str(row["question_id"])
        k = seen.get(qid, 0)
        seen[qid] = k + 1
        samples.append(Sample(
            id=f"{qid}#{k}",
            prompt=build_prompt(row),
            answer=str(row["answer"]).lower().strip().replace(".", ""),
            image=rgb(row.get("image")),
            meta={"category": row["category"], "question_id": qid},
        ))
    return samples


def _parse(sample: Sample, output: str) -> str:
    return parse_yes_no(output)


def _score(sample: Sample, parsed: str) -> bool:
    return parsed == sample.answer


def _metrics(records: list[dict]) -> dict:
    by_cat: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        m = r["meta"]
        by_cat.setdefault(str(m["category"]), {}).setdefault(str(m["question_id"]), []).append(bool(r["correct"]))
    out: dict[str, float] = {
        "accuracy": sum(bool(r["correct"]) for r in records) / len(records) if records else 0.0,
    }
    images = [v for cat in by_cat.values() for v in cat.values()]
    out["accuracy_plus"] = sum(all(v) for v in images) / len(images) if images else 0.0
    scores: dict[str, float] = {}
    for cat, per_image in sorted(by_cat.items()):
        total = 0.0
        for vals in per_image.values():  # lmms-eval asserts two questions per image; a --limit may cut one
            total += sum(vals) / len(vals) * 100.0 + (100.0 if all(vals) else 0.0)
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
    load=_load,
    parse=_parse,
    score=_score,
    metrics=_metrics,
    max_new_tokens=16,
    splits=("test", CALIB_SPLIT),
    dataset_ids=DATASET_IDS,
)
