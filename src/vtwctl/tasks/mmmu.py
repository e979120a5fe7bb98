"""MMMU validation (lmms-eval ``mmmu_val``): college-level multimodal questions, 30 subjects.

Prompt (lmms-eval ``construct_prompt``, default kwargs, ``interleaved_format: false``):
multiple choice: ``"{question}\\nA. ...\\nB. ...\\n\\nAnswer with the option's letter from the given choices
directly."``; open: ``"{question}\\n\\nAnswer the question using a single word or phrase."``. The
``<image 1>``... placeholders stay in the text, as in lmms-eval.

Images: every ``image_i`` the question and its options mention (``mmmu_doc_to_visual``: sorted by name,
each once), all given to the model in that order (the chat template gets one image entry each, before
the text); a question that mentions none gets none, as in lmms-eval.

Parsing and scoring follow the MMMU evaluation code that lmms-eval vendors:
``parse_multi_choice_response`` (brackets, bare letters, "X.", then option text in long answers;
when nothing is found lmms-eval picks a random letter, here a deterministic pseudo-random one seeded by
the question id: the one deliberate difference) and, for open questions, ``parse_open_response`` +
``eval_open`` (applied in ``score``; ``parse`` keeps the stripped answer). ``--scoring lenient`` tries
``parse_letter`` first. Metrics: ``accuracy`` and accuracy per subject and per discipline
(``accuracy_domain_*``).

Calibration uses the ``dev`` split (150 questions, with answers), disjoint from ``validation``.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re

from . import Sample, Task
from .common import (
    MC_POST_PROMPT,
    SHORT_POST_PROMPT,
    fraction,
    grouped_accuracy,
    letters,
    options_block,
    parse_letter,
    rgb,
)

DATASET_IDS = ("lmms-lab-encoder/MMMU", "lmms-lab/MMMU", "MMMU/MMMU")

DOMAIN_CAT2SUB_CAT = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}
SUBJECTS = sorted(s for subs in DOMAIN_CAT2SUB_CAT.values() for s in subs)
SUB2DOMAIN = {s: d for d, subs in DOMAIN_CAT2SUB_CAT.items() for s in subs}


def _load_official(ds_id: str, split: str, online: bool):
    """MMMU/MMMU keeps one config per subject: load them all, in subject order."""
    import contextlib

    import datasets

    from .common import offline

    with contextlib.nullcontext() if online else offline():
        parts = [datasets.load_dataset(ds_id, subject, split=split) for subject in SUBJECTS]
    return datasets.concatenate_datasets(parts)


def _config(ds_id: str):
    return _load_official if ds_id == "MMMU/MMMU" else None


def parse_options(options) -> list[str]:
    if isinstance(options, str):
        return list(ast.literal_eval(options)) if options.strip() else []
    return list(options or [])


def doc_to_text(doc: dict) -> str:
    question = doc["question"]
    if doc["question_type"] == "multiple-choice":
        return f"{question}\n{options_block(parse_options(doc['options']))}\n\n{MC_POST_PROMPT}"
    return f"{question}\n\n{SHORT_POST_PROMPT}"


def image_keys(doc: dict) -> list[str]:
    """``image_i`` columns the prompt (question, and options of a multiple-choice question) refers to
    (lmms-eval's ``mmmu_doc_to_visual``)."""
    text = doc_to_text(doc)
    return sorted({t.strip("<>").replace(" ", "_") for t in re.findall(r"<image \d+>", text)})


def doc_to_visual(doc: dict) -> list:
    return [rgb(doc[k]) for k in image_keys(doc) if doc.get(k) is not None]


def subject_of(qid: str) -> str:
    """``validation_Art_Theory_12`` -> ``Art_Theory`` (lmms-eval's extract_subset_name)."""
    head = qid.split("_")[0]
    m = re.match(rf"^{re.escape(head)}_(.+?)_\d+$", qid)
    return m.group(1) if m else "unknown"


def doc_to_meta(doc: dict) -> dict:
    opts = parse_options(doc.get("options")) if doc["question_type"] == "multiple-choice" else []
    subject = subject_of(str(doc["id"]))
    keys = image_keys(doc)
    return {"question_type": doc["question_type"], "subject": subject, "domain": SUB2DOMAIN.get(subject, "unknown"),
            "options": [str(o) for o in opts], "num_images": len(keys), "image_keys": keys,
            "img_type": str(doc.get("img_type")), "difficulty": doc.get("topic_difficulty")}


# ----------------------------------------------------------------- MMMU's parsing and evaluation
def parse_multi_choice_response(response: str, all_choices: list[str], index2ans: dict[str, str],
                                rng: random.Random | None = None) -> str:
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, ans_with_brack = True, False
    candidates = [c for c in all_choices if f"({c})" in response]
    if candidates:
        ans_with_brack = True
    if not candidates:
        candidates = [c for c in all_choices if f"{c} " in response]
    if not candidates:
        candidates = [c for c in all_choices if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False
    if not candidates:
        return (rng or random.Random(0)).choice(all_choices) if all_choices else ""
    if len(candidates) == 1:
        return candidates[0]
    if index_ans:
        pattern = "({})" if ans_with_brack else " {} "
        starts = [response.rfind(pattern.format(c)) for c in candidates]
    else:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    return candidates[max(range(len(starts)), key=lambda i: (starts[i], -i))]


def extract_numbers(string: str) -> list[str]:
    pattern_commas = r"-?\b\d{1,3}(?:,\d{3})+\b"
    pattern_scientific = r"-?\d+(?:\.\d+)?[eE][+-]?\d+"
    pattern_simple = r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"
    return [*re.findall(pattern_commas, string), *re.findall(pattern_scientific, string),
            *re.findall(pattern_simple, string)]


def check_is_number(string: str) -> bool:
    try:
        float(string.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(string: str) -> list:
    string = string.strip()
    if check_is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    string = string.lower()
    if len(string) == 1:
        return [" " + string, string + " "]
    return [string]


def parse_open_response(response: str) -> list:
    def key_subresponses(resp_all: str) -> list[str]:
        resp_all = resp_all.strip().strip(".").lower()
        subs = re.split(r"\.\s(?=[A-Z])|\n", resp_all)
        indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
        keys = []
        for index, resp in enumerate(subs):
            if index == len(subs) - 1:
                indicators.extend(["="])
            shortest = None
            for ind in indicators:
                if ind in resp:
                    tail = resp.split(ind)[-1].strip()
                    if not shortest or len(tail) < len(shortest):
                        shortest = tail
            if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
                keys.append(shortest)
        return keys or [resp_all]

    keys = key_subresponses(response)
    preds = list(keys)
    for resp in keys:
        preds.extend(extract_numbers(resp))
    out = []
    for p in preds:
        out.extend(normalize_str(p))
    uniq = []
    for p in out:  # lmms-eval dedups with set(); keep the first occurrence (deterministic order)
        if p not in uniq:
            uniq.append(p)
    return uniq


def eval_open(gold: str | list[str], preds: list) -> bool:
    norm_answers: list = []
    for ans in gold if isinstance(gold, list) else [gold]:
        norm_answers.extend(normalize_str(ans))
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False


def _rng(sample: Sample) -> random.Random:
    return random.Random(int(hashlib.md5(sample.id.encode("utf-8")).hexdigest(), 16) % (2**32))


def _parse(sample: Sample, output: str) -> str:
    if sample.meta["question_type"] == "multiple-choice":
        opts = sample.meta["options"]
        choices = letters(len(opts))
        return parse_multi_choice_response(output, choices, dict(zip(choices, opts)), _rng(sample))
    return output.strip()


def _lenient(sample: Sample, output: str) -> str:
    if sample.meta["question_type"] == "multiple-choice":
        opts = sample.meta["options"]
        choices = letters(len(opts))
        return parse_letter(output, choices, dict(zip(choices, opts))) or _parse(sample, output)
    return output.strip()


def _score(sample: Sample, parsed: str) -> bool:
    if sample.meta["question_type"] == "multiple-choice":
        return parsed == sample.answer
    # lmms-eval passes the answer column (a string, sometimes a list literal) to eval_open as it is
    return eval_open(sample.answer, parse_open_response(parsed))


def _metrics(records: list[dict]) -> dict:
    return {"accuracy": fraction([r["correct"] for r in records]),
            **grouped_accuracy(records, "domain", "accuracy_domain_"), **grouped_accuracy(records, "subject")}


TASK = Task(
    name="mmmu",
    description="MMMU validation (lmms-eval mmmu_val): multiple choice + open answers, accuracy per subject",
    test_split="validation",
    calibration_split="dev",
    doc_to_text=doc_to_text,
    doc_to_visual=doc_to_visual,
    doc_to_target=lambda doc: str(doc["answer"]),
    doc_to_id=lambda row: str(row["id"]),
    doc_to_meta=doc_to_meta,
    parsers={"lmms-eval": _parse, "lenient": _lenient},
    score=_score,
    aggregation=_metrics,
    generation_kwargs={"max_new_tokens": 128},
    splits=("dev", "validation", "test"),
    dataset_ids=DATASET_IDS,
    dataset_config=_config,
    key_columns=("id",),
    columns=("id", "question", "options", "answer", "question_type", "image_1"),
)
