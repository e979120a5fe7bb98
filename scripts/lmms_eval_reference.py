"""Write tests/tasks/data/lmms_eval_reference.json: how lmms-eval itself reads a large set of messy model
outputs on a few documents of each task (its parsed answer and its correctness), computed by calling
lmms-eval's own task functions. The tests compare vtwctl's ``--scoring lmms-eval`` with this table.

Run with a Python where lmms-eval is importable (its task utils need loguru, pandas, yaml, datasets,
opencv; torch is imported by lmms_eval.api): ``python scripts/lmms_eval_reference.py [OUT]``.

The pipeline is lmms-eval's CLI default: the task's filter (AI2D's MultiChoiceRegexFilter), then
``strip_reasoning_tags`` with the CLI's default ``--reasoning_tags`` (which also strips whitespace),
then ``process_results`` / the task's evaluator. "parsed" is what lmms-eval compares with the target;
where lmms-eval only returns a score (ScienceQA, AI2D), it is found by asking lmms-eval which target
letter the output would be right for.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from importlib.metadata import version
from pathlib import Path

TAGS = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]  # lmms-eval's CLI default --reasoning_tags

MC_OUTPUTS = [
    "A", "B", "C", "D", "E", "a", "b", "c", "A.", "B.", "b.", "C. red", "D. blue", "B. cat", "(A)", "(b)", "(C)", "[D]",
    "A)", "B)", "C:", "D,", " A", "B ", "\nC\n", "  D. ", "A\n", "B\nC", "A B", "A and B", "B or C", "B, C", "A/B",
    "The answer is B.", "The answer is (C).", "the answer is d", "Answer: C", "Answer: (D)", "answer: b", "Option D",
    "option B", "The correct option is A.", "The best answer is C", "I choose D", "I think it's C.", "I'd say B",
    "It is a dog.", "dog", "Dog.", "cat", "a cat", "red", "blue", "The image shows a dog.", "There is a cat and a dog.",
    "Looking at the options, A is wrong and C is wrong, so the answer is D.",
    "A is a tempting choice, but B and C are not; the answer is D", "First A, then B, finally C.",
    "<think>A looks wrong</think>B", "<think>it is C</think> D.", "<think>hmm</think>\nA", "</think>C",
    "<think>unclosed A",
    "<analysis>maybe A</analysis>B.", "<THINK>A</THINK>B", "**B**", "B is correct.", "Z. none", "Z", "1", "2", "None",
    "", " ", "n/a", "The answer is E.", "E. none of these", "I don't know.", "Both A and B are possible.",
    "A dog is shown in the picture, and the answer is C", "D. It is blue, like the sky at noon on a clear day",
    "The correct answer is (B) cat", "B (cat)", "(B) cat", "B: cat", "Answer:B", "answer is C because red",
    "I cannot determine", "ABCD", "The options are A, B, C and D.", "A.B.", "A. dog B. cat", "Final answer: D",
]
YN_OUTPUTS = [
    "Yes", "yes", "Yes.", "YES", "No", "no", "No.", "NO.", " yes ", "yes\n", "\nno", "Y", "y", "N", "n", "Y.", "n.",
    "Yes, there is a dog.", "No, there is no dog.", "Yes there is", "No there isn't", "There is no dog.",
    "There is a dog.", "I think yes.", "I think no.", "nope", "yeah", "yep", "Not sure", "not", "no.", "yes.", "ye",
    "noo", "yess", "Yes!", "No!", "<think>no</think>yes", "<think>yes</think> No.", "</think>Yes",
    "<analysis>x</analysis>no",
    "", " ", "Maybe", "Yes or no", "No, yes", "Yes, no", "Answer: yes", "The answer is no.", "none", "nothing",
    "Unknown", "It is not in the image.", "Is there? No.", "Yes.\nNo.", "No\n\nYes", "yesno", "y e s", "No comment",
]
OPEN_OUTPUTS = ["24", "The answer is 24.", "24.0", "24 apples", "twenty-four", "1,024", "1024", "It is 3.14", "3.14159",
                "Paris", "paris", "The capital is Paris.", "So the result is 12", "x = 5", "The final answer is 5.",
                "", "A", "a", "Therefore, 7. So 8.", "<think>9</think>10", "1e3", "-5", "The value is -5.0"]


def mc_docs():
    return {
        "sqa": [
            {"question": "Which animal is this?", "choices": ["dog", "cat", "red", "blue"], "answer": 1,
             "hint": "", "subject": "natural science"},
            {"question": "Which is a colour?", "choices": ["a", "c", "D", "b"], "answer": 2,
             "hint": "Look at the letters.", "subject": "language science"},
            {"question": "Which is true?", "choices": ["yes", "no"], "answer": 0, "hint": "",
             "subject": "social science"},
        ],
        "ai2d": [
            {"question": "Which animal is this?", "options": ["dog", "cat", "red", "blue"], "answer": "1"},
            {"question": "which of these define dairy item", "options": ["c", "D", "b", "a"], "answer": "3"},
            {"question": "What is the producer?", "options": ["frog", "grass", "hawk"], "answer": "2"},
        ],
        "mmbench": [
            {"index": 1, "question": "What is the main object?", "hint": "nan", "answer": "B", "A": "dog", "B": "cat",
             "C": "red", "D": "blue", "category": "image_topic", "L2-category": "Coarse Perception",
             "source": "MMBench", "split": "dev"},
            {"index": 2, "question": "Which color?", "hint": "The sky at noon.", "answer": "C", "A": "green",
             "B": "red", "C": "blue", "D": "nan", "category": "color", "L2-category": "Coarse Perception",
             "source": "MMBench", "split": "dev"},
            {"index": 3, "question": "How many?", "hint": "nan", "answer": "D", "A": "1", "B": "2", "C": "3",
             "D": "4", "category": "count", "L2-category": "Fine-grained Perception", "source": "MMBench",
             "split": "dev"},
        ],
        "videomme": [
            {"videoID": "v1", "question_id": "001-1", "duration": "short", "domain": "Knowledge",
             "sub_category": "Humanity & History", "task_type": "Counting Problem",
             "question": "How many people appear?", "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
             "answer": "C"},
            {"videoID": "v2", "question_id": "002-1", "duration": "long", "domain": "Sports Competition",
             "sub_category": "Football", "task_type": "OCR Problems", "question": "What is the score?",
             "options": ["A. 1-0.", "B. 2-1.", "C. 0-0.", "D. 3-2."], "answer": "A"},
        ],
        "mmmu": [
            {"id": "validation_Art_1", "question": "Which animal? <image 1>",
             "options": "['dog', 'cat', 'red', 'blue']",
             "answer": "B", "question_type": "multiple-choice"},
            {"id": "validation_Math_2", "question": "What is the value? <image 1>", "options": "[]", "answer": "24",
             "question_type": "open"},
            {"id": "validation_Geography_3", "question": "Which city?", "options": "[]", "answer": "Paris",
             "question_type": "open"},
            {"id": "validation_Physics_4", "question": "Pick one <image 1>", "options": "['1', '2', '3', '4']",
             "answer": "D", "question_type": "multiple-choice"},
        ],
    }


def yn_docs():
    return {
        "pope": [{"question_id": "1", "question": "Is there a dog in the image?", "answer": "yes",
                  "category": "random"},
                 {"question_id": "2", "question": "Is there a cat in the image?", "answer": "no",
                  "category": "popular"}],
        "mme": [{"question_id": "a.jpg", "question": "Is there a dog? Please answer yes or no.", "answer": "Yes",
                 "category": "existence"},
                {"question_id": "a.jpg", "question": "Is there a cat? Please answer yes or no.", "answer": "No",
                 "category": "existence"}],
    }


def main(out: str) -> None:
    from lmms_eval.api.metrics import exact_match_hf_evaluate
    from lmms_eval.api.reasoning import strip_reasoning_tags
    from lmms_eval.tasks.ai2d import utils as ai2d
    from lmms_eval.tasks.mmbench import en_utils
    from lmms_eval.tasks.mme import utils as mme
    from lmms_eval.tasks.mmmu import utils as mmmu
    from lmms_eval.tasks.pope import utils as pope
    from lmms_eval.tasks.scienceqa import utils as sqa
    from lmms_eval.tasks.videomme import utils as videomme

    strip = lambda s: strip_reasoning_tags(s, TAGS)  # noqa: E731
    cases: dict[str, list] = {}
    docs = {**mc_docs(), **yn_docs()}

    def add(task, d, output, parsed, correct):
        cases.setdefault(task, []).append({"doc": d, "output": output, "parsed": parsed, "correct": correct})

    for d, o in itertools.product(range(3), MC_OUTPUTS):
        doc = docs["sqa"][d]
        text = strip(o)
        correct = sqa.sqa_process_results(doc, [text])["exact_match"] == 1.0
        right_for = [L for i, L in enumerate("ABCD"[: len(doc["choices"])])
                     if sqa.sqa_process_results({**doc, "answer": i}, [text])["exact_match"] == 1.0]
        add("sqa", d, o, right_for[0] if right_for else "", correct)

        doc = docs["ai2d"][d]
        f = ai2d.MultiChoiceRegexFilter(regex_pattern="([A-Z])\\.", group_select=0, ignore_case=True,
                                        ignore_punctuation=True)
        filtered = strip(f.apply([[o]], [doc])[0])
        target = ai2d.ai2d_doc_to_target(doc, "mcq")
        em = exact_match_hf_evaluate([filtered], [target], ignore_case=True, ignore_punctuation=True)["exact_match"]
        add("ai2d", d, o, filtered, bool(em == 1.0))

        doc = docs["mmbench"][d]
        evaluator = en_utils.mmbench_evaluator
        res = en_utils.mmbench_process_results(doc, [strip(o)])["gpt_eval_score"]
        import pandas as pd

        data = pd.DataFrame([res])
        for k in list(data.keys()):
            data[k.lower() if k not in "ABCD" else k] = data.pop(k)
        item = data.iloc[0]
        from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

        pre = evaluator.prefetch_answer(item)
        parsed = pre or extract_mcq_answer(item["prediction"], choices=sorted(evaluator.build_choices(item).keys()))
        hit = evaluator.eval_sub_data(data, {doc["index"]: doc["answer"]}, static_only=True)
        add("mmbench", d, o, parsed, bool(hit))

    for d, o in itertools.product(range(2), MC_OUTPUTS):
        doc = docs["videomme"][d]
        r = videomme.videomme_process_results(doc, [strip(o)])["videomme_perception_score"]
        add("videomme", d, o, r["pred_answer"], r["score"] == 1.0)

    for d, o in itertools.product(range(4), MC_OUTPUTS + OPEN_OUTPUTS):
        doc = docs["mmmu"][d]
        saved = random.choice
        random.choice = lambda seq: "<random>"
        try:
            r = mmmu.mmmu_process_results(doc, [strip(o)])["mmmu_acc"]
        finally:
            random.choice = saved
        pred = r["parsed_pred"][0]
        if doc["question_type"] == "multiple-choice":
            correct = "random" if pred == "<random>" else bool(mmmu.eval_multi_choice(doc["answer"], pred))
            add("mmmu", d, o, "<random>" if pred == "<random>" else pred, correct)
        else:
            add("mmmu", d, o, sorted(map(str, pred)), bool(mmmu.eval_open(doc["answer"], pred)))

    for d, o in itertools.product(range(2), YN_OUTPUTS):
        doc = docs["pope"][d]
        r = pope.pope_process_results(doc, [strip(o)])["pope_accuracy"]
        add("pope", d, o, r["prediction"], r["score"] == 1.0)
        doc = docs["mme"][d]
        r = mme.mme_process_results(doc, [strip(o)])
        score = next(iter(r.values()))["score"]
        add("mme", d, o, mme.parse_pred_ans(strip(o)), score == 1.0)

    table = {"lmms_eval_version": version("lmms_eval"), "reasoning_tags": TAGS, "docs": docs, "cases": cases}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in cases.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/tasks/data/lmms_eval_reference.json")
