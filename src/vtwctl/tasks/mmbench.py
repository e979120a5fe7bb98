"""MMBench-EN (lmms-eval ``mmbench_en_dev``) with circular evaluation.

Prompt (lmms-eval ``en_utils.mmbench_doc_to_text``): ``"{hint} {question} {options}"`` (no hint when it
is missing / "nan") where options = ``"There are several options:\\nA. ...\\nB. ..."``, then
``"\\n" + "\\nAnswer with the option's letter from the given choices directly."`` (so a blank line).

The ``dev`` split holds every question several times with its options rotated ("circular"
variants): the variants of question ``i`` have ``index % 1_000_000 == i``. ``accuracy`` is the
circular accuracy MMBench reports (a question counts only if all its variants are right), over the
original questions (``index < 1e6``), also per ``category`` and ``L2-category``; ``accuracy_vanilla``
scores the original questions alone and ``accuracy_all_variants`` every row.

Answer extraction is MMBench's rule-based ``can_infer`` (option letter, then option text); lmms-eval
falls back to a GPT judge when that fails, which is not available here: such answers count as wrong.

The ``test`` split has no public answers, so it cannot be scored here; it is the calibration split
(calibration only compares the model's logits with and without VTW, it needs no answers).
"""

from __future__ import annotations

from . import Sample, Task
from .common import MC_POST_PROMPT, fraction, is_missing, load_rows, parse_letter, rgb

DATASET_IDS = ("lmms-lab/MMBench", "lmms-lab/MMBench_EN")
CONFIG = "en"
SYS_PROMPT = "There are several options:"
POST_PROMPT = "\n" + MC_POST_PROMPT
OPTION_CANDIDATES = ("A", "B", "C", "D", "E")
CIRCULAR = 1_000_000


def _config(ds_id: str) -> str | None:
    return CONFIG if ds_id == "lmms-lab/MMBench" else None


def options_of(row: dict) -> dict[str, str]:
    return {c: str(row[c]) for c in OPTION_CANDIDATES if c in row and not is_missing(row[c])}


def build_prompt(row: dict) -> str:
    options = options_of(row)
    options_prompt = f"{SYS_PROMPT}\n" + "".join(f"{k}. {v}\n" for k, v in sorted(options.items()))
    options_prompt = options_prompt.rstrip("\n")
    hint = row.get("hint")
    query = f"{row['question']} {options_prompt}"
    if hint is not None and not (isinstance(hint, float) and hint != hint) and hint != "nan":  # as lmms-eval
        query = f"{hint} {query}"
    return f"{query}\n{POST_PROMPT}"


def to_sample(row: dict) -> Sample:
    index = int(float(row["index"]))  # int64 in lmms-lab/MMBench_EN, a string in lmms-lab/MMBench "en"
    answer = row.get("answer")
    return Sample(
        id=str(index),
        prompt=build_prompt(row),
        answer="" if is_missing(answer) else str(answer).strip(),
        image=rgb(row.get("image")),
        meta={"index": index, "group": index % CIRCULAR, "options": options_of(row),
              "category": row.get("category"), "l2_category": row.get("L2-category", row.get("l2-category")),
              "source": row.get("source")},
    )


def _load(split: str, limit: int | None = None, seed: int = 0, source: str | None = None) -> list[Sample]:
    rows = load_rows(DATASET_IDS, _config, split, limit, source, name="mmbench", subdir=CONFIG)
    return [to_sample(row) for row in rows]


def _parse(sample: Sample, output: str) -> str:
    options = sample.meta.get("options") or {}
    return parse_letter(output, "".join(sorted(options)) or "ABCD", options)


def _score(sample: Sample, parsed: str) -> bool:
    return bool(sample.answer) and parsed == sample.answer


def _metrics(records: list[dict]) -> dict:
    groups: dict[int, list[dict]] = {}
    for r in records:
        groups.setdefault(int(r["meta"]["group"]), []).append(r)
    hits: dict[int, bool] = {g: all(bool(r["correct"]) for r in recs) for g, recs in groups.items()}
    main: dict[int, dict] = {}
    for g, recs in groups.items():  # the original question, else (a --limit cut it) its first variant
        recs_sorted = sorted(recs, key=lambda r: int(r["meta"]["index"]))
        main[g] = recs_sorted[0]
    out: dict[str, float] = {
        "accuracy": fraction(list(hits.values())),
        "accuracy_vanilla": fraction([bool(main[g]["correct"]) for g in main]),
        "accuracy_all_variants": fraction([bool(r["correct"]) for r in records]),
        "questions": float(len(groups)),
    }
    for key, prefix in (("category", "accuracy_"), ("l2_category", "accuracy_l2_")):
        per: dict[str, list[bool]] = {}
        for g, rec in main.items():
            per.setdefault(str(rec["meta"].get(key)), []).append(hits[g])
        for name, vals in sorted(per.items()):
            out[f"{prefix}{name}"] = fraction(vals)
    return out


TASK = Task(
    name="mmbench",
    description="MMBench-EN dev (lmms-eval mmbench_en_dev): multiple choice, circular accuracy",
    test_split="dev",
    calibration_split="test",
    load=_load,
    parse=_parse,
    score=_score,
    metrics=_metrics,
    max_new_tokens=16,
    splits=("dev", "test"),
    dataset_ids=DATASET_IDS,
)
