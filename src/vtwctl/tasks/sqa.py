"""ScienceQA-IMG (lmms-eval ``scienceqa_img``): science multiple choice questions with an image.

Prompt (lmms-eval default): ``"Context: {hint}\\n"`` (only when the hint is not empty) + question +
``"\\nA. ...\\nB. ..."`` + ``"\\nAnswer with the option's letter from the given choices directly."``.
Target: the letter of ``answer`` (an index into ``choices``). Metric: accuracy.
"""

from __future__ import annotations

from . import Sample, Task
from .common import MC_POST_PROMPT, fraction, grouped_accuracy, letters, load_rows, options_block, parse_letter, rgb

DATASET_IDS = ("lmms-lab/ScienceQA", "lmms-lab/ScienceQA-IMG", "derek-thomas/ScienceQA")
CONFIG = "ScienceQA-IMG"


def _config(ds_id: str) -> str | None:
    # lmms-lab/ScienceQA has the configs ScienceQA-IMG / ScienceQA-FULL; lmms-lab/ScienceQA-IMG (image rows only)
    # and derek-thomas/ScienceQA (the full set, filtered here) have none.
    return CONFIG if ds_id == "lmms-lab/ScienceQA" else None


def build_prompt(row: dict) -> str:
    context = row.get("hint") or ""
    if context:
        context = f"Context: {context}\n"
    return f"{context}{row['question']}\n{options_block(row['choices'])}\n{MC_POST_PROMPT}"


def to_sample(row: dict, index: int, split: str) -> Sample:
    opts = letters(len(row["choices"]))
    return Sample(
        id=f"sqa-{split}-{index}",
        prompt=build_prompt(row),
        answer=opts[int(row["answer"])],
        image=rgb(row.get("image")),
        meta={"choices": len(opts), "options": dict(zip(opts, (str(c) for c in row["choices"]))),
              "subject": row.get("subject"), "category": row.get("category"), "grade": row.get("grade")},
    )


def _load(split: str, limit: int | None = None, seed: int = 0, source: str | None = None) -> list[Sample]:
    # ScienceQA-IMG only: rows without an image (derek-thomas/ScienceQA is the full set) are dropped.
    rows = load_rows(DATASET_IDS, _config, split, limit, source, name="sqa", key_columns=("image",),
                     row_filter=lambda r: r.get("image") is not None, subdir=CONFIG)
    return [to_sample(row, row["_row"], split) for row in rows]


def _parse(sample: Sample, output: str) -> str:
    return parse_letter(output, letters(sample.meta["choices"]), sample.meta.get("options"))


def _score(sample: Sample, parsed: str) -> bool:
    return parsed == sample.answer


def _metrics(records: list[dict]) -> dict:
    out = {"accuracy": fraction([r["correct"] for r in records])}
    out.update(grouped_accuracy(records, "subject"))
    return out


TASK = Task(
    name="sqa",
    description="ScienceQA-IMG (lmms-eval scienceqa_img): multiple choice, letter answers, accuracy",
    test_split="test",
    calibration_split="validation",
    load=_load,
    parse=_parse,
    score=_score,
    metrics=_metrics,
    max_new_tokens=16,
    splits=("validation", "test", "train"),
    dataset_ids=DATASET_IDS,
)
