import datasets
import pytest

from vtwctl.tasks import get
from vtwctl.tasks.common import in_calib

from .conftest import image, records, write_parquet

POPE_FEATURES = {
    "id": datasets.Value("string"), "question_id": datasets.Value("string"), "question": datasets.Value("string"),
    "answer": datasets.Value("string"), "image_source": datasets.Value("string"), "image": datasets.Image(),
    "category": datasets.Value("string"),
}


def pope_rows():
    spec = [  # (category, object, answer)
        ("adversarial", "dining table", "yes"), ("adversarial", "car", "no"), ("adversarial", "person", "yes"),
        ("popular", "chair", "no"), ("popular", "cup", "yes"), ("random", "kite", "no"),
    ]
    return [{"id": str(i), "question_id": str(i + 1), "question": f" Is there a {obj} in the image? ",
             "answer": ans, "image_source": f"COCO_val2014_{i:012d}", "image": image(), "category": cat}
            for i, (cat, obj, ans) in enumerate(spec)]


def test_pope_prompt_parse_and_metrics(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", pope_rows(), POPE_FEATURES)
    task = get("pope")
    samples = task.load("test", source=str(tmp_path))
    assert samples[0].prompt == ("Is there a dining table in the image?\n"
                                 "Answer the question using a single word or phrase.")
    assert [s.answer for s in samples] == ["yes", "no", "yes", "no", "yes", "no"]
    outputs = ["Yes, there is.", "Yes", "No.", "no", "I think it's a cat", "No, there is no kite."]
    # lmms-eval: only an exact yes/no counts; "No." and "Yes, there is." are neither
    lmms = records(task, samples, outputs)
    assert [r["parsed"] for r in lmms] == ["yes, there is.", "yes", "no.", "no", "i think it's a cat",
                                          "no, there is no kite."]
    m = task.metrics(lmms)  # TP=0, FP=1 (row 1), FN=0, TN=1 (row 3)
    assert m["accuracy"] == pytest.approx(1 / 6) and m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["pred_yes_ratio"] == pytest.approx(1 / 6)
    recs = records(task, samples, outputs, scoring="lenient")
    assert [r["parsed"] for r in recs] == ["yes", "yes", "no", "no", "other", "no"]
    m = task.metrics(recs)
    # TP=1 (row 0), FP=1 (row 1), FN=1 (row 2; row 4 is "other", neither yes nor no), TN=2
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(1 / 2)
    assert m["yes_ratio"] == pytest.approx(3 / 6)  # lmms-eval: share of "yes" ground truth
    assert m["pred_yes_ratio"] == pytest.approx(2 / 6)
    assert m["accuracy_adversarial"] == pytest.approx(1 / 3)
    assert m["precision_adversarial"] == pytest.approx(1 / 2)
    assert m["recall_adversarial"] == pytest.approx(1 / 2)
    assert m["accuracy_popular"] == pytest.approx(1 / 2)
    assert m["recall_popular"] == 0.0 and m["precision_popular"] == 0.0 and m["f1_popular"] == 0.0
    assert m["accuracy_random"] == 1.0 and m["yes_ratio_random"] == 0.0


MME_FEATURES = {"question_id": datasets.Value("string"), "image": datasets.Image(),
                "question": datasets.Value("string"), "answer": datasets.Value("string"),
                "category": datasets.Value("string")}


def mme_rows():
    return [
        {"question_id": "code_reasoning/0020.png", "image": image(), "category": "code_reasoning", "answer": "Yes",
         "question": "Is a c++ code shown in the picture? Please answer yes or no."},
        {"question_id": "code_reasoning/0020.png", "image": image(), "category": "code_reasoning", "answer": "No",
         "question": "Is a python code shown in the picture? Please answer yes or no."},
        {"question_id": "000000006040.jpg", "image": image(), "category": "existence", "answer": "Yes",
         "question": "Is there a train in this image? Please answer yes or no."},
        {"question_id": "000000006040.jpg", "image": image(), "category": "existence", "answer": "No",
         "question": "Is there a bed in this image? Please answer yes or no."},
    ]


def test_mme_prompt_and_scores(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", mme_rows(), MME_FEATURES)
    task = get("mme")
    samples = task.load("test", source=str(tmp_path))
    assert samples[0].prompt == ("Is a c++ code shown in the picture?\n"
                                 "Answer the question using a single word or phrase.")
    assert [s.answer for s in samples] == ["yes", "no", "yes", "no"]
    assert [s.id for s in samples] == ["code_reasoning/0020.png#0", "code_reasoning/0020.png#1",
                                       "000000006040.jpg#0", "000000006040.jpg#1"]
    recs = records(task, samples, ["Yes", "No.", "Yes, there is a train.", "Yes"])  # Otter's rule reads all four
    assert [r["correct"] for r in recs] == [True, True, True, False]
    m = task.metrics(recs)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["accuracy_plus"] == pytest.approx(1 / 2)
    assert m["score_code_reasoning"] == pytest.approx(200.0)  # acc 100 + acc+ 100
    assert m["score_existence"] == pytest.approx(50.0)  # acc 50 + acc+ 0
    assert m["perception"] == pytest.approx(50.0)
    assert m["cognition"] == pytest.approx(200.0)
    assert m["total"] == pytest.approx(250.0)


def test_calib_keeps_image_pairs_together(tmp_path):
    rows = [{**r, "question_id": f"{i:03d}.jpg"} for i in range(60) for r in mme_rows()[2:]]
    write_parquet(tmp_path / "test.parquet", rows, MME_FEATURES)
    task = get("mme")
    calib = task.load("calib", source=str(tmp_path / "test.parquet"))
    expected = [f"{i:03d}.jpg" for i in range(60) if in_calib(f"{i:03d}.jpg")]
    assert expected, "fixture too small to hit the calib bucket"
    assert [s.meta["question_id"] for s in calib] == [q for q in expected for _ in range(2)]
    assert len(task.load("calib", limit=1, source=str(tmp_path / "test.parquet"))) == 1
    assert len(task.load("test", source=str(tmp_path / "test.parquet"))) == 120


def test_pope_metrics_on_evaluate_records(tmp_path):
    """``evaluate`` writes the raw model text as "answer" and the reference as "target"."""
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", pope_rows(), POPE_FEATURES)
    task = get("pope")
    samples = task.load("test", source=str(tmp_path))
    outputs = ["Yes, there is.", "Yes", "No.", "no", "I think it's a cat", "No, there is no kite."]
    for scoring in ("lmms-eval", "lenient"):
        plain = records(task, samples, outputs, scoring)
        recs = [{**r, "answer": out, "target": r["answer"]} for r, out in zip(plain, outputs)]
        assert task.metrics(recs) == task.metrics(plain)
