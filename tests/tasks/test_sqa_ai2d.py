import datasets
import pytest

from vtwctl.tasks import get

from .conftest import image, records, write_parquet

SQA_FEATURES = {
    "image": datasets.Image(), "question": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("int8"),
    "hint": datasets.Value("string"), "task": datasets.Value("string"), "grade": datasets.Value("string"),
    "subject": datasets.Value("string"), "topic": datasets.Value("string"), "category": datasets.Value("string"),
    "skill": datasets.Value("string"), "lecture": datasets.Value("string"), "solution": datasets.Value("string"),
}


def sqa_row(question, choices, answer, hint="", subject="natural science"):
    return {"image": image(), "question": question, "choices": choices, "answer": answer, "hint": hint,
            "task": "closed choice", "grade": "grade4", "subject": subject, "topic": "geography",
            "category": "Geography", "skill": "Read a map", "lecture": "", "solution": ""}


@pytest.fixture
def sqa_dir(tmp_path):
    rows = [
        sqa_row("Which of these states is farthest north?", ["West Virginia", "Louisiana", "Arizona", "Oklahoma"], 0),
        sqa_row("Which animal's feet are also adapted for sticking to smooth surfaces?", ["tiger", "tokay gecko"], 1,
                hint="Tree frogs live in rain forests.", subject="language science"),
        sqa_row("Is the following trait inherited or acquired?", ["inherited", "acquired"], 1),
    ]
    write_parquet(tmp_path / "ScienceQA-IMG" / "test-00000-of-00001.parquet", rows, SQA_FEATURES)
    # a full hub download also has ScienceQA-FULL: it must not be mixed in
    write_parquet(tmp_path / "ScienceQA-FULL" / "test-00000-of-00001.parquet", rows * 2, SQA_FEATURES)
    val = [{**rows[0], "question": "Which is a solid?"}]
    write_parquet(tmp_path / "ScienceQA-IMG" / "validation-00000-of-00001.parquet", val, SQA_FEATURES)
    return tmp_path


def test_sqa_prompts_answers_and_load(sqa_dir):
    task = get("sqa")
    samples = task.load("test", source=str(sqa_dir))
    assert len(samples) == 3
    assert samples[0].prompt == (
        "Which of these states is farthest north?\nA. West Virginia\nB. Louisiana\nC. Arizona\nD. Oklahoma\n"
        "Answer with the option's letter from the given choices directly.")
    assert samples[1].prompt == (
        "Context: Tree frogs live in rain forests.\nWhich animal's feet are also adapted for sticking to smooth "
        "surfaces?\nA. tiger\nB. tokay gecko\nAnswer with the option's letter from the given choices directly.")
    assert [s.answer for s in samples] == ["A", "B", "B"]
    assert samples[0].image.mode == "RGB" and samples[0].image.size == (12, 10)
    assert len({s.id for s in samples}) == 3
    assert [s.id for s in task.load("test", limit=2, source=str(sqa_dir))] == [s.id for s in samples[:2]]
    calib = task.load(task.calibration_split, source=str(sqa_dir))
    assert [s.prompt.split("\n")[0] for s in calib] == ["Which is a solid?"]


def test_sqa_parse_and_metrics(sqa_dir):
    task = get("sqa")
    samples = task.load("test", source=str(sqa_dir))
    outputs = ["The answer is (A).", "b", "A. inherited"]
    assert [r["parsed"] for r in records(task, samples, outputs)] == ["", "B", "A"]  # lmms-eval's rule
    recs = records(task, samples, outputs, scoring="lenient")
    assert [r["parsed"] for r in recs] == ["A", "B", "A"]
    m = task.metrics(recs)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy_natural science"] == pytest.approx(0.5)
    assert m["accuracy_language science"] == 1.0
    assert task.parse(samples[1], "I think it's a tokay gecko", "lenient") == "B"
    assert task.parse(samples[1], "I think it's a tokay gecko") == ""


AI2D_FEATURES = {"question": datasets.Value("string"), "options": datasets.Sequence(datasets.Value("string")),
                 "answer": datasets.Value("string"), "image": datasets.Image()}


def test_ai2d(tmp_path):
    rows = [
        {"question": "which of these define dairy item", "options": ["c", "D", "b", "a"], "answer": "1",
         "image": image()},
        {"question": "What is the producer in the diagram?", "options": ["frog", "grass", "hawk"], "answer": "1",
         "image": image((0, 120, 0))},
        {"question": "Which stage comes after the egg?", "options": ["adult", "larva", "pupa", "nymph"],
         "answer": "1", "image": image((0, 0, 200))},
    ]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows, AI2D_FEATURES)
    task = get("ai2d")
    samples = task.load("test", source=str(tmp_path))
    assert samples[1].prompt == ("What is the producer in the diagram?\nA. frog\nB. grass\nC. hawk\n"
                                 "Answer with the option's letter from the given choices directly.")
    assert [s.answer for s in samples] == ["B", "B", "B"]
    recs = records(task, samples, ["B", "Answer: C", "(B) larva"], scoring="lenient")
    assert [r["correct"] for r in recs] == [True, False, True]
    assert task.metrics(recs) == {"accuracy": pytest.approx(2 / 3)}
    # lmms-eval: a leading "X." letter, else the whole answer, equal to the letter up to case and punctuation
    recs = records(task, samples, ["b", "B. D", "(B) larva"])
    assert [(r["parsed"], r["correct"]) for r in recs] == [("b", True), ("B", True), ("(B) larva", False)]
    # the calib pseudo-split is a deterministic hash-bucket subset of the test rows
    from vtwctl.tasks.common import in_calib

    calib = task.load("calib", source=str(tmp_path))
    assert [s.id for s in calib] == [f"ai2d-{i}" for i in range(3) if in_calib(f"ai2d-{i}")]
