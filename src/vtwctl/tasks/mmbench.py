"""MMBench-EN dev (lmms-eval ``mmbench_en_dev_static``; ``mmbench_en_dev`` with ``--judge-url``), circular.

Prompt (lmms-eval ``en_utils.mmbench_doc_to_text``): ``"{hint} {question} {options}"`` (no hint when it
is missing / "nan") where options = ``"There are several options:\\nA. ...\\nB. ..."``, then
``"\\n" + "\\nAnswer with the option's letter from the given choices directly."`` (so a blank line).
Generation: up to 1024 new tokens, stopping at "ASSISTANT:" (lmms-eval's generation_kwargs).

The ``dev`` split holds every question several times with its options rotated ("circular"
variants): the variants of question ``i`` have ``index % 1_000_000 == i``. ``accuracy`` is the
circular accuracy MMBench reports (a question counts only if all its variants are right), over the
questions whose original row (``index < 1e6``) was run, also per ``category`` and ``L2-category``;
``accuracy_vanilla`` scores the original rows alone and ``accuracy_all_variants`` every row.

Scoring ``lmms-eval`` (MMBench's evaluator, as lmms-eval runs it): ``can_infer`` (one option letter
A-E standing alone, then exactly one option text as a substring); when that finds nothing, the static
rules of ``mmbench_en_dev_static`` (``extract_mcq_answer``: a leading or final letter, "the answer is
X", ... ranked) or, with a judge endpoint, MMBench's GPT matching prompt (``judge.py``).
``lenient``: ``parse_letter``.

The ``test`` split has no public answers, so it cannot be scored here; it is the calibration split
(calibration only compares the model's logits with and without VTW, it needs no answers).
"""

from __future__ import annotations

from . import Sample, Task
from .common import MC_POST_PROMPT, fraction, grouped, is_missing, parse_letter, rgb
from .lmms_rules import can_infer, extract_mcq_answer, mmbench_choices

DATASET_IDS = ("lmms-lab-encoder/MMBench", "lmms-lab/MMBench", "lmms-lab/MMBench_EN")
CONFIG = "en"
SYS_PROMPT = "There are several options:"
POST_PROMPT = "\n" + MC_POST_PROMPT
OPTION_CANDIDATES = ("A", "B", "C", "D", "E")
CIRCULAR = 1_000_000


def _config(ds_id: str) -> str | None:
    return CONFIG if ds_id.endswith("/MMBench") else None


def options_of(doc: dict) -> dict[str, str]:
    """The options shown in the prompt (MMBench's ``create_options_prompt``: missing and "nan" left out)."""
    return {c: str(doc[c]) for c in OPTION_CANDIDATES if c in doc and doc[c] and not is_missing(doc[c])}


def doc_to_text(doc: dict) -> str:
    options = options_of(doc)
    options_prompt = f"{SYS_PROMPT}\n" + "".join(f"{k}. {v}\n" for k, v in sorted(options.items()))
    query = f"{doc['question']} {options_prompt.rstrip(chr(10))}"
    hint = doc.get("hint")
    if hint is not None and not (isinstance(hint, float) and hint != hint) and hint != "nan":  # as lmms-eval
        query = f"{hint} {query}"
    return f"{query}\n{POST_PROMPT}"


def doc_to_meta(doc: dict) -> dict:
    index = int(float(doc["index"]))
    return {"index": index, "group": index % CIRCULAR, "options": options_of(doc),
            # what MMBench's build_choices sees (A-D; a "nan" string counts as an option text there)
            "choices": mmbench_choices({c: doc.get(c) for c in "ABCD"}),
            "question": doc["question"], "category": doc.get("category"),
            "l2_category": doc.get("L2-category", doc.get("l2-category")),
            "source": doc.get("source")}


def _lmms(sample: Sample, output: str) -> str:
    """``can_infer``, else the static rules (what ``mmbench_en_dev_static`` counts)."""
    choices = sample.meta.get("choices") or {}
    return can_infer(output, choices) or extract_mcq_answer(output, sorted(choices))


def _judged(sample: Sample, output: str, judge) -> tuple[str, str]:
    """``can_infer``, else the GPT judge (what ``mmbench_en_dev`` counts); (letter, what decided)."""
    choices = sample.meta.get("choices") or {}
    found = can_infer(output, choices)
    if found:
        return found, "rules"
    return judge.match(sample, output, choices), judge.name


def _lenient(sample: Sample, output: str) -> str:
    options = sample.meta.get("options") or {}
    return parse_letter(output, "".join(sorted(options)) or "ABCD", options)


def _metrics(records: list[dict]) -> dict:
    groups = grouped(records, lambda r: int(r["meta"]["group"]))
    main = {g: recs for g, recs in groups.items() if any(int(r["meta"]["index"]) < CIRCULAR for r in recs)}
    hits = {g: all(bool(r["correct"]) for r in recs) for g, recs in main.items()}
    originals = {g: next(r for r in recs if int(r["meta"]["index"]) < CIRCULAR) for g, recs in main.items()}
    out: dict[str, float] = {
        "accuracy": fraction(list(hits.values())),
        "accuracy_vanilla": fraction([bool(originals[g]["correct"]) for g in originals]),
        "accuracy_all_variants": fraction([bool(r["correct"]) for r in records]),
        "questions": float(len(main)),
    }
    for key, prefix in (("category", "accuracy_"), ("l2_category", "accuracy_l2_")):
        for name, recs in grouped(list(originals.values()), key).items():
            out[f"{prefix}{name}"] = fraction([hits[str(r["meta"]["group"])] for r in recs])
    return out


TASK = Task(
    name="mmbench",
    description="MMBench-EN dev (lmms-eval mmbench_en_dev_static): multiple choice, circular accuracy",
    test_split="dev",
    calibration_split="test",
    doc_to_text=doc_to_text,
    doc_to_visual=lambda doc: [rgb(doc["image"])],
    doc_to_target=lambda doc: "" if is_missing(doc.get("answer")) else str(doc["answer"]).strip(),
    doc_to_id=lambda row: str(int(float(row["index"]))),  # int64 in lmms-lab/MMBench_EN, a string elsewhere
    doc_to_meta=doc_to_meta,
    parsers={"lmms-eval": _lmms, "lenient": _lenient},
    judge_parser=_judged,
    score=lambda sample, parsed: bool(sample.answer) and parsed == sample.answer,
    aggregation=_metrics,
    generation_kwargs={"max_new_tokens": 1024, "until": ["ASSISTANT:"]},
    splits=("dev", "test"),
    dataset_ids=DATASET_IDS,
    dataset_config=_config,
    subdir=CONFIG,
    key_columns=("index",),
    columns=("index", "question", "hint", "A", "B", "image"),
)
