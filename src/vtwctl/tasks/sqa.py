"""ScienceQA-IMG (lmms-eval ``scienceqa_img``): science multiple choice questions with an image.

Prompt (lmms-eval default): ``"Context: {hint}\\n"`` (only when the hint is not empty) + question +
``"\\nA. ...\\nB. ..."`` + ``"\\nAnswer with the option's letter from the given choices directly."``.
Target: the letter of ``answer`` (an index into ``choices``). Metric: accuracy (per subject too).

Scoring ``lmms-eval``: ``sqa_process_results``: only an answer that is the letter alone (any case) or
starts with an uppercase letter and a dot ("B. tokay gecko") counts. ``lenient``: ``parse_letter``.
"""

from __future__ import annotations

from . import Task
from .common import MC_POST_PROMPT, fraction, grouped_accuracy, letters, options_block, parse_letter, rgb
from .lmms_rules import sqa

DATASET_IDS = ("lmms-lab-encoder/ScienceQA", "lmms-lab/ScienceQA", "lmms-lab/ScienceQA-IMG", "derek-thomas/ScienceQA")
CONFIG = "ScienceQA-IMG"
COLUMNS = ("image", "question", "choices", "answer", "hint")


def _config(ds_id: str) -> str | None:
    # lmms-lab(-encoder)/ScienceQA have the configs ScienceQA-IMG / ScienceQA-FULL; lmms-lab/ScienceQA-IMG
    # (image rows only) and derek-thomas/ScienceQA (the full set, filtered here) have none.
    return CONFIG if ds_id.endswith("/ScienceQA") and not ds_id.startswith("derek-thomas/") else None


def doc_to_text(doc: dict) -> str:
    context = doc.get("hint") or ""
    if context:
        context = f"Context: {context}\n"
    return f"{context}{doc['question']}\n{options_block(doc['choices'])}\n{MC_POST_PROMPT}"


def doc_to_meta(doc: dict) -> dict:
    opts = letters(len(doc["choices"]))
    return {"choices": len(opts), "options": dict(zip(opts, (str(c) for c in doc["choices"]))),
            "subject": doc.get("subject"), "category": doc.get("category"), "grade": doc.get("grade")}


def _lenient(sample, output: str) -> str:
    return parse_letter(output, letters(sample.meta["choices"]), sample.meta.get("options"))


def _metrics(records: list[dict]) -> dict:
    return {"accuracy": fraction([r["correct"] for r in records]), **grouped_accuracy(records, "subject")}


TASK = Task(
    name="sqa",
    description="ScienceQA-IMG (lmms-eval scienceqa_img): multiple choice, letter answers, accuracy",
    test_split="test",
    calibration_split="validation",
    doc_to_text=doc_to_text,
    doc_to_visual=lambda doc: [rgb(doc["image"])] if doc.get("image") is not None else [],
    doc_to_target=lambda doc: letters(len(doc["choices"]))[int(doc["answer"])],
    doc_to_id=lambda row: f"sqa-{row['_split']}-{row['_row']}",
    doc_to_meta=doc_to_meta,
    parsers={"lmms-eval": lambda sample, output: sqa(output, "".join(letters(sample.meta["choices"]))),
             "lenient": _lenient},
    score=lambda sample, parsed: parsed == sample.answer,
    aggregation=_metrics,
    generation_kwargs={"max_new_tokens": 16},
    splits=("validation", "test", "train"),
    dataset_ids=DATASET_IDS,
    dataset_config=_config,
    subdir=CONFIG,
    key_columns=("image",),
    columns=COLUMNS,
    # ScienceQA-IMG only: rows without an image (derek-thomas/ScienceQA is the full set) are dropped.
    row_filter=lambda row: row.get("image") is not None,
)
