"""AI2D (lmms-eval ``ai2d``): science diagram multiple choice.

Prompt (lmms-eval default, ``prompt_format: mcq``): question + ``"\\nA. ...\\nB. ..."`` +
``"\\nAnswer with the option's letter from the given choices directly."``. Target: the letter of
``answer`` (a string index into ``options``). Metric: accuracy.

lmms-lab/ai2d only has a ``test`` split; calibration uses the ``calib`` pseudo-split: the test rows
whose md5(row index) % 20 == 0 (~5%, deterministic). They stay in the test split (as in the paper,
which calibrates on a tiny subset of the target datasets), so test numbers stay comparable.
"""

from __future__ import annotations

from . import Sample, Task
from .common import CALIB_SPLIT, MC_POST_PROMPT, fraction, letters, load_rows, options_block, parse_letter, rgb

DATASET_IDS = ("lmms-lab/ai2d",)


def build_prompt(row: dict) -> str:
    return f"{row['question']}\n{options_block(row['options'])}\n{MC_POST_PROMPT}"


def to_sample(row: dict) -> Sample:
    opts = letters(len(row["options"]))
    return Sample(
        id=f"ai2d-{row['_row']}",
        prompt=build_prompt(row),
        answer=opts[int(row["answer"])],
        image=rgb(row.get("image")),
        meta={"choices": len(opts), "options": dict(zip(opts, (str(o) for o in row["options"])))},
    )


def _load(split: str, limit: int | None = None, seed: int = 0, source: str | None = None) -> list[Sample]:
    rows = load_rows(DATASET_IDS, None, split, limit, source, name="ai2d", calib_key=lambda row, i: f"ai2d-{i}")
    return [to_sample(row) for row in rows]


def _parse(sample: Sample, output: str) -> str:
    return parse_letter(output, letters(sample.meta["choices"]), sample.meta.get("options"))


def _score(sample: Sample, parsed: str) -> bool:
    return parsed == sample.answer


def _metrics(records: list[dict]) -> dict:
    return {"accuracy": fraction([r["correct"] for r in records])}


TASK = Task(
    name="ai2d",
    description="AI2D diagrams (lmms-eval ai2d): multiple choice, letter answers, accuracy",
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
