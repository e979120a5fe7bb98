import datasets
import pytest

from vtwctl.tasks import get

from .conftest import image, records, write_parquet

S = datasets.Value("string")
MMB_FEATURES = {"index": datasets.Value("int64"), "question": S, "hint": S, "answer": S, "A": S, "B": S, "C": S,
                "D": S, "category": S, "image": datasets.Image(), "source": S, "L2-category": S, "comment": S,
                "split": S}


def mmb_row(index, options, answer, hint="nan", question="What is the main object?", category="image_topic"):
    opts = dict(zip("ABCD", [*options, "nan", "nan", "nan", "nan"][:4]))
    return {"index": index, "question": question, "hint": hint, "answer": answer, **opts, "category": category,
            "image": image(), "source": "MMBench", "L2-category": "Coarse Perception", "comment": "nan",
            "split": "dev"}


@pytest.fixture
def mmb_dir(tmp_path):
    rows = [
        # question 1 and its circular variants (options rotated)
        mmb_row(1, ["dog", "cat", "bird"], "B"),
        mmb_row(1_000_001, ["cat", "bird", "dog"], "A"),
        mmb_row(2_000_001, ["bird", "dog", "cat"], "C"),
        # question 2 (with a hint) and one variant
        mmb_row(2, ["red", "blue"], "A", hint="The sky at noon.", question="Which color?", category="color"),
        mmb_row(1_000_002, ["blue", "red"], "B", hint="The sky at noon.", question="Which color?", category="color"),
    ]
    write_parquet(tmp_path / "en" / "dev-00000-of-00001.parquet", rows, MMB_FEATURES)
    cn = [{**r, "question": "主要物体是什么?"} for r in rows]
    write_parquet(tmp_path / "cn" / "dev-00000-of-00001.parquet", cn, MMB_FEATURES)  # must not be mixed in
    return tmp_path


def test_mmbench_prompt(mmb_dir):
    samples = get("mmbench").load("dev", source=str(mmb_dir))
    assert len(samples) == 5
    assert samples[0].prompt == ("What is the main object? There are several options:\nA. dog\nB. cat\nC. bird\n\n"
                                 "Answer with the option's letter from the given choices directly.")
    assert samples[3].prompt == ("The sky at noon. Which color? There are several options:\nA. red\nB. blue\n\n"
                                 "Answer with the option's letter from the given choices directly.")
    assert [s.meta["group"] for s in samples] == [1, 1, 1, 2, 2]


def test_mmbench_circular_metrics(mmb_dir):
    task = get("mmbench")
    samples = task.load("dev", source=str(mmb_dir))
    # question 1: all three variants right; question 2: original right, the variant wrong
    recs = records(task, samples, ["B", "The answer is (A).", "B. dog", "A", "A"])
    assert [r["correct"] for r in recs] == [True, True, False, True, False]
    recs = records(task, samples, ["B", "The answer is (A).", "cat", "A", "A"])
    assert [r["correct"] for r in recs] == [True, True, True, True, False]
    m = task.metrics(recs)
    assert m["accuracy"] == pytest.approx(1 / 2)  # circular: question 2 fails
    assert m["accuracy_vanilla"] == 1.0
    assert m["accuracy_all_variants"] == pytest.approx(4 / 5)
    assert m["accuracy_image_topic"] == 1.0 and m["accuracy_color"] == 0.0
    assert m["accuracy_l2_Coarse Perception"] == pytest.approx(1 / 2)
    assert task.parse(samples[0], "E", "lenient") == ""  # not an option of this question
    assert task.parse(samples[0], "E") == "E"  # MMBench's can_infer_option reads A-E whatever the options


S_MMMU = {"id": S, "question": S, "options": S, "explanation": S,
          **{f"image_{i}": datasets.Image() for i in range(1, 8)},
          "img_type": S, "answer": S, "topic_difficulty": S, "question_type": S, "subfield": S}


def mmmu_row(qid, question, options, answer, qtype="multiple-choice", images=1):
    row = {"id": qid, "question": question, "options": options, "explanation": "", "img_type": "['Diagrams']",
           "answer": answer, "topic_difficulty": "Medium", "question_type": qtype, "subfield": "Finance"}
    for i in range(1, 8):
        row[f"image_{i}"] = image((10 * i, 0, 0)) if i <= images else None
    return row


@pytest.fixture
def mmmu_dir(tmp_path):
    rows = [
        mmmu_row("validation_Accounting_1", "<image 1> Which is the net income?", "['$10', '$20', '$30', '$40']", "B"),
        mmmu_row("validation_Art_Theory_2", "Compare <image 2> with <image 1>. Which is older?",
                 "['left', 'right']", "A", images=2),
        mmmu_row("validation_Math_3", "<image 1> What is x?", "[]", "3.5", qtype="open"),
        mmmu_row("validation_Math_4", "<image 1> Name the curve.", "[]", "parabola", qtype="open"),
    ]
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", rows, S_MMMU)
    write_parquet(tmp_path / "data" / "dev-00000-of-00001.parquet", rows[:1], S_MMMU)
    return tmp_path


def test_mmmu_prompts_and_images(mmmu_dir):
    task = get("mmmu")
    samples = task.load("validation", source=str(mmmu_dir))
    assert samples[0].prompt == ("<image 1> Which is the net income?\nA. $10\nB. $20\nC. $30\nD. $40\n\n"
                                 "Answer with the option's letter from the given choices directly.")
    assert samples[2].prompt == "<image 1> What is x?\n\nAnswer the question using a single word or phrase."
    assert samples[1].meta["num_images"] == 2 and samples[1].meta["image_keys"] == ["image_1", "image_2"]
    assert samples[1].image.getpixel((0, 0)) == (10, 0, 0)  # image_1 (first by name)
    # every referenced image, in lmms-eval's order (sorted by name), not only the first
    assert [im.getpixel((0, 0)) for im in samples[1].images] == [(10, 0, 0), (20, 0, 0)]
    assert [len(s.images) for s in samples] == [1, 2, 1, 1]
    assert [s.meta["subject"] for s in samples] == ["Accounting", "Art_Theory", "Math", "Math"]
    assert [s.id for s in task.load("dev", source=str(mmmu_dir))] == ["validation_Accounting_1"]


def test_mmmu_parse_and_metrics(mmmu_dir):
    task = get("mmmu")
    samples = task.load("validation", source=str(mmmu_dir))
    assert task.parse(samples[0], "The answer is (B).") == "B"
    assert task.parse(samples[0], "B.") == "B"
    assert task.parse(samples[0], "Answer: C") == "C"
    assert task.parse(samples[0], "I would say that the net income is $20 overall") == "B"
    fallback = task.parse(samples[0], "no idea")
    assert fallback in "ABCD" and fallback == task.parse(samples[0], "no idea")  # deterministic random pick
    recs = records(task, samples, ["(B)", "B", "x = 3.50", "It is a parabola."])
    assert [r["correct"] for r in recs] == [True, False, True, True]
    m = task.metrics(recs)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["accuracy_Math"] == 1.0 and m["accuracy_Art_Theory"] == 0.0
    assert m["accuracy_domain_Science"] == 1.0 and m["accuracy_domain_Business"] == 1.0
    assert m["accuracy_domain_Art and Design"] == 0.0


def test_mmbench_old_repo_schema(tmp_path):
    """lmms-lab/MMBench_EN: lowercase "l2-category", data/dev-*; lmms-lab/MMBench "en" stores index as a string."""
    feats = {**{k: v for k, v in MMB_FEATURES.items() if k != "L2-category"}, "l2-category": S, "index": S}
    rows = []
    for r in (mmb_row(3, ["x", "y"], "B"), mmb_row(1_000_003, ["y", "x"], "A")):
        l2 = r.pop("L2-category")
        rows.append({**r, "index": str(r["index"]), "l2-category": l2})
    write_parquet(tmp_path / "data" / "dev-00000-of-00001.parquet", rows, feats)
    samples = get("mmbench").load("dev", source=str(tmp_path))
    assert [s.meta["group"] for s in samples] == [3, 3]
    assert samples[0].meta["l2_category"] == "Coarse Perception"
