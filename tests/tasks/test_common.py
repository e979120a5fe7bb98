import pytest

from vtwctl.errors import VTWError
from vtwctl.tasks import REGISTRY, get
from vtwctl.tasks.common import in_calib, parse_letter, parse_yes_no

NEW = ("sqa", "ai2d", "mmmu", "mmbench", "pope", "mme", "videomme")
OPTS = {"A": "dog", "B": "cat", "C": "red", "D": "blue"}


@pytest.mark.parametrize("name", NEW)
def test_registered_and_calibration_is_not_test(name):
    assert name in REGISTRY
    task = get(name)
    assert task.name == name
    assert task.calibration_split != task.test_split
    assert task.test_split in task.splits and task.calibration_split in task.splits
    assert task.dataset_ids and task.max_new_tokens >= 1


@pytest.mark.parametrize("output,expected", [
    ("B", "B"), ("The answer is (B).", "B"), ("B.", "B"), ("b", "B"), ("Answer: C", "C"), ("(D)", "D"),
    ("C) red", "C"), ("The correct option is D.", "D"), ("I think it's a cat", "B"), ("answer is a dog", "A"),
    ("", ""), ("Hmm, hard to tell.", ""), ("E", ""),
])
def test_parse_letter(output, expected):
    assert parse_letter(output, "ABCD", OPTS) == expected


@pytest.mark.parametrize("output,expected", [
    ("Yes", "yes"), ("yes.", "yes"), ("Yes, there is.", "yes"), ("No.", "no"), ("no", "no"), ("N", "no"),
    ("Y", "yes"), ("There is no dog in the image.", "no"), ("I think it's a cat", "other"), ("", "other"),
])
def test_parse_yes_no(output, expected):
    assert parse_yes_no(output) == expected


def test_calib_bucket_is_deterministic_and_small():
    keys = [f"k{i}" for i in range(2000)]
    picked = [k for k in keys if in_calib(k)]
    assert picked == [k for k in keys if in_calib(k)]
    assert 40 < len(picked) < 170  # about 5%


@pytest.mark.parametrize("name", NEW)
def test_offline_without_data_is_one_clear_line(name, hf_offline):
    task = get(name)
    with pytest.raises(VTWError) as err:
        task.load(task.test_split, limit=2)
    msg = str(err.value)
    assert "\n" not in msg
    assert task.dataset_ids[0] in msg and "--data-dir" in msg and "hf download --repo-type dataset" in msg


def test_missing_data_dir_is_clear(tmp_path):
    with pytest.raises(VTWError, match="no parquet files for split 'test'"):
        get("pope").load("test", source=str(tmp_path))
    with pytest.raises(VTWError, match="dataset path not found"):
        get("pope").load("test", source=str(tmp_path / "nope"))


def test_source_kinds(tmp_path, hf_offline):
    from vtwctl.tasks.common import is_local

    assert is_local(str(tmp_path))  # an existing path is local
    assert is_local("no-such-dir") and is_local("./x") and is_local("x.parquet")
    assert not is_local("lmms-lab/POPE")
    with pytest.raises(VTWError, match="dataset path not found"):
        get("pope").load("test", source="no-such-dir")
    with pytest.raises(VTWError, match="dataset someone/POPE-copy .*hub cannot be reached"):
        get("pope").load("test", source="someone/POPE-copy")
