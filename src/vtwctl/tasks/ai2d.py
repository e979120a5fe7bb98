"""AI2D (lmms-eval ``ai2d``): science diagram multiple choice.

Prompt (lmms-eval default, ``prompt_format: mcq``): question + ``"\\nA. ...\\nB. ..."`` +
``"\\nAnswer with the option's letter from the given choices directly."``. Target: the letter of
``answer`` (a string index into ``options``). Metric: accuracy.

Scoring ``lmms-eval``: the task's ``MultiChoiceRegexFilter`` (the letter of a leading ``X.``, else the
whole answer), then exact match with the target ignoring case and punctuation ("(b)" is right,
"B is right" is not). ``lenient``: ``parse_letter``.

Only a ``test`` split; calibration uses the ``calib`` pseudo-split: the test rows whose
md5("ai2d-{row}") % 20 == 0 (~5%, deterministic). They stay in the test split (as in the paper, which
calibrates on a tiny subset of the target datasets), so test numbers stay comparable.
"""

from __future__ import annotations

from . import Task
from .common import CALIB_SPLIT, MC_POST_PROMPT, fraction, letters, options_block, parse_letter, rgb
from .lmms_rules import ai2d_filter, exact_match

DATASET_IDS = ("lmms-lab-encoder/ai2d", "lmms-lab/ai2d")


def doc_to_text(doc: dict) -> str:
    return f"{doc['question']}\n{options_block(doc['options'])}\n{MC_POST_PROMPT}"


def doc_to_meta(doc: dict) -> dict:
    opts = letters(len(doc["options"]))
    return {"choices": len(opts), "options": dict(zip(opts, (str(o) for o in doc["options"])))}


def _lenient(sample, output: str) -> str:
    return parse_letter(output, letters(sample.meta["choices"]), sample.meta.get("options"))


def _score(sample, parsed: str) -> bool:
    return exact_match(parsed, sample.answer, ignore_case=True, ignore_punctuation=True)


TASK = Task(
    name="ai2d",
    description="AI2D diagrams (lmms-eval ai2d): multiple choice, letter answers, accuracy",
    test_split="test",
    calibration_split=CALIB_SPLIT,
    doc_to_text=doc_to_text,
    doc_to_visual=lambda doc: [rgb(doc["image"])],
    doc_to_target=lambda doc: letters(len(doc["options"]))[int(doc["answer"])],
    doc_to_id=lambda row: f"ai2d-{row['_row']}",
    doc_to_meta=doc_to_meta,
    parsers={"lmms-eval": lambda sample, output: output, "lenient": _lenient},
    lmms_filter=ai2d_filter,
    score=_score,
    aggregation=lambda records: {"accuracy": fraction([r["correct"] for r in records])},
    generation_kwargs={"max_new_tokens": 16},
    splits=("test", CALIB_SPLIT),
    dataset_ids=DATASET_IDS,
    columns=("question", "options", "answer", "image"),
    calib_key=lambda row: f"ai2d-{row['_row']}",
)
