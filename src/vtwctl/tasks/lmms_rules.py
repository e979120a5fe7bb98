"""lmms-eval's answer rules, rewritten from its published task code (lmms-eval 0.7.3 on PyPI).

Each function takes a model output as lmms-eval's ``process_results`` receives it and returns what
lmms-eval compares with the target. ``--scoring lmms-eval`` (the default) uses only these, so a
vtwctl accuracy can stand next to an lmms-eval one. Where lmms-eval's rule lives:

* ``strip_reasoning_tags``  lmms_eval/api/reasoning.py, applied by the CLI's default
  ``--reasoning_tags '[["<think>", "</think>"], ["<analysis>", "</analysis>"]]'`` after the task
  filters and before ``process_results`` (it also strips surrounding whitespace).
* ``exact_match``           lmms_eval/api/metrics.py ``exact_match_hf_evaluate``.
* ``sqa``                   tasks/scienceqa/utils.py ``sqa_process_results``.
* ``ai2d_filter``           tasks/ai2d/utils.py ``MultiChoiceRegexFilter`` (+ exact_match, ignore case
  and punctuation).
* ``pope``                  tasks/pope/utils.py ``pope_process_results``.
* ``mme``                   tasks/mme/utils.py ``parse_pred_ans`` (from Otter).
* ``can_infer_option`` / ``can_infer_text``  tasks/mmbench/mmbench_evals.py (MMBench's rules).
* ``extract_mcq_answer``    tasks/_task_utils/mcq_extract.py (MMBench static fallback, Video-MME).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence

REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def strip_reasoning_tags(text: str, tag_pairs: Sequence[Sequence[str]] = REASONING_TAGS) -> str:
    """Remove ``<think>...</think>`` style blocks (and a dangling closing tag's prefix), then strip."""
    result = text or ""
    for start_tag, end_tag in tag_pairs:
        while start_tag in result and end_tag in result:
            start = result.find(start_tag)
            end = result.find(end_tag, start)
            if start == -1 or end == -1:
                break
            result = result[:start] + result[end + len(end_tag):]
        if end_tag in result and start_tag not in result:  # the template pre-filled the opening tag
            result = result.rsplit(end_tag, 1)[-1]
    return result.strip()


_ASCII_PUNCT = str.maketrans("", "", string.punctuation)


def exact_match(prediction: str, reference: str, ignore_case: bool = False, ignore_punctuation: bool = False) -> bool:
    """HF-evaluate exact match as lmms-eval configures it (no whitespace stripping)."""
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        prediction, reference = prediction.translate(_ASCII_PUNCT), reference.translate(_ASCII_PUNCT)
    return prediction == reference


# ----------------------------------------------------------------------------------------- ScienceQA
def sqa(output: str, choices: str) -> str:
    """The option letter lmms-eval's ScienceQA rule reads: the whole answer is one character (any case),
    or it starts with an uppercase character and a dot ("B. tokay gecko"); anything else, or a letter
    that is not one of ``choices``, reads as nothing."""
    pred = output.strip()
    if len(pred) == 1:
        read = pred.upper()  # lmms-eval: pred.lower() == target (a lowercased letter)
    elif len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        read = pred[0]
    else:
        return ""
    return read if read in choices else ""


# ---------------------------------------------------------------------------------------------- AI2D
_AI2D_LETTER = re.compile(r"^\s*([A-Z])\.")


def ai2d_filter(output: str) -> str:
    """``MultiChoiceRegexFilter``: the letter of a leading ``X.``, else the response unchanged."""
    m = _AI2D_LETTER.match(output)
    return m.group(1) if m else output


# ------------------------------------------------------------------------------------------ yes / no
def pope(output: str) -> str:
    """POPE compares ``output.lower().strip()`` with "yes"/"no" exactly."""
    return output.lower().strip()


def mme(output: str) -> str:
    """Otter's ``parse_pred_ans``: "yes", "no" or "other"."""
    pred = output.lower().strip().replace(".", "")
    if pred in ("yes", "no"):
        return pred
    if len(pred) == 1:
        return {"y": "yes", "n": "no"}.get(pred, "other")
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


# -------------------------------------------------------------------------------------------- MMBench
def _count(tokens: Sequence[str], choices: str, prefix: str = "", suffix: str = "") -> int:
    return sum(1 for c in choices if prefix + c + suffix in tokens)


_OPTION_FORMS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                 (":", ","), (":", "."), (":", ")"), (":", ")."))


def can_infer_option(answer: str, num_choice: int = 5) -> str:
    """MMBench's ``can_infer_option`` over the letters A-E (whatever the question's options are)."""
    choices = string.ascii_uppercase[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return ""
    tokens = [x.strip() for x in answer.split()]
    if _count(tokens, choices) == 1 and not ("A" in tokens and len(tokens) > 3):  # "A" may be an article
        for ch in choices:
            if ch in tokens:
                return ch
    for pre, suf in _OPTION_FORMS:
        if _count(tokens, choices, pre, suf) == 1:
            for ch in choices:
                if pre + ch + suf in tokens:
                    return ch
    return ""


def mmbench_choices(options: Mapping[str, object]) -> dict[str, str]:
    """MMBench's ``build_choices``: options A-D whose value is not missing (None / NaN)."""
    out = {}
    for ch in "ABCD":
        value = options.get(ch)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[ch] = str(value)
    return out


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str:
    """MMBench's ``can_infer_text``: exactly one option's text occurs (as a substring) in the answer."""
    low = answer.lower()
    hits = [k for k, v in choices.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else ""


def can_infer(answer: str, choices: Mapping[str, str]) -> str:
    return can_infer_option(answer) or can_infer_text(answer, choices)


_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}


def extract_mcq_answer(response: str, choices: Sequence[str] = tuple("ABCDEFGH")) -> str:
    """lmms-eval's ranked multiple-choice extraction: the highest-priority form wins (a letter that
    starts or ends the answer, "the answer is X", "(X)", "X.", "X:", "X)", "X "), the last occurrence
    within a form; "" when no letter occurs."""
    if not response or not response.strip():
        return ""
    choices = list(choices) or list("ABCDEFGH")
    text = response.strip()
    for char in (",", ".", "!", "?", ";", ":", "'", '"'):
        text = text.strip(char)
    text = f" {text} "
    found: list[tuple[str, int, str]] = []
    for form, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                          ("space", "{} ")):
        for ch in choices:
            p = pattern.format(ch)
            if p in text:
                found.append((ch, text.rfind(p), form))
    low = text.lower()
    for phrase in _ANSWER_PHRASES:
        idx = low.find(phrase)
        if idx != -1:
            after = idx + len(phrase)
            for ch in choices:
                pos = text.find(ch, after)
                if pos != -1:
                    found.append((ch, pos, "phrase"))
    stripped = text.strip()
    for ch in choices:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            found.append((ch, 0, "start"))
    for ch in choices:
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            found.append((ch, len(text) - 1, "end"))
    if not found:
        for ch in choices:
            if ch in text:
                found.append((ch, text.rfind(ch), "fallback"))
    if not found:
        return ""
    found.sort(key=lambda x: (_PRIORITY[x[2]], x[1]), reverse=True)  # stable, as lmms-eval's list.sort
    return found[0][0]
