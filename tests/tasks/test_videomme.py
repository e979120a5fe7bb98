import datasets
import numpy as np
import pytest

from vtwctl.errors import VTWError
from vtwctl.tasks import get

from .conftest import image, records, write_parquet

S = datasets.Value("string")
FEATURES = {"video_id": S, "duration": S, "domain": S, "sub_category": S, "url": S, "videoID": S,
            "question_id": S, "task_type": S, "question": S, "options": datasets.Sequence(S), "answer": S}


def row(vid, n, qid, duration, answer, task_type="Counting Problem"):
    return {"video_id": n, "duration": duration, "domain": "Knowledge", "sub_category": "Humanity & History",
            "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": qid,
            "task_type": task_type, "question": "How many people appear in the video?",
            "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": answer}


@pytest.fixture
def vmme_dir(tmp_path):
    rows = [row("fFjv93ACGo8", "001", "001-1", "short", "C"), row("fFjv93ACGo8", "001", "001-2", "short", "A"),
            row("JqLLxLpLb4c", "301", "301-1", "medium", "D", task_type="OCR Problems")]
    write_parquet(tmp_path / "videomme" / "test-00000-of-00001.parquet", rows, FEATURES)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "fFjv93ACGo8.npy", np.zeros((20, 6, 8, 3), dtype=np.uint8))
    frames = tmp_path / "data" / "JqLLxLpLb4c"
    frames.mkdir()
    for i in range(3):
        image((i * 50, 0, 0), (8, 6)).save(frames / f"{i:04d}.png")
    return tmp_path


def test_videomme_prompt_frames_parse_metrics(vmme_dir):
    task = get("videomme")
    samples = task.load("test", source=str(vmme_dir))
    assert samples[0].prompt == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "How many people appear in the video?\nA. One.\nB. Two.\nC. Three.\nD. Four.\n\n"
        "Answer with the option's letter from the given choices directly.")
    assert samples[0].video.shape == (8, 6, 8, 3) and samples[0].video is samples[1].video
    assert samples[2].video.shape == (3, 6, 8, 3)
    assert samples[0].image is None
    assert task.parse(samples[0], "The best answer is C.") == "C"
    assert task.parse(samples[0], "Answer: C") == "C"
    assert task.parse(samples[0], "I think there are three people", "lenient") == "C"
    assert task.parse(samples[0], "I think there are three people") == ""  # lmms-eval reads no letter
    recs = records(task, samples, ["C", "(B)", "D. Four."])
    assert [r["correct"] for r in recs] == [True, False, True]
    m = task.metrics(recs)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy_short"] == pytest.approx(1 / 2) and m["accuracy_medium"] == 1.0
    assert m["accuracy_task_OCR Problems"] == 1.0


def test_videomme_missing_video_is_clear(vmme_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (vmme_dir / "data" / "fFjv93ACGo8.npy").unlink()
    with pytest.raises(VTWError, match="video fFjv93ACGo8 .*not found") as err:
        get("videomme").load("test", source=str(vmme_dir))
    assert "\n" not in str(err.value)


def test_videomme_frames_env(vmme_dir, monkeypatch):
    monkeypatch.setenv("VTWCTL_VIDEO_FRAMES", "4")
    assert get("videomme").load("test", limit=1, source=str(vmme_dir))[0].video.shape[0] == 4


def test_videomme_from_vtwctl_data_dir(vmme_dir, monkeypatch, tmp_path_factory):
    """No --data-dir (e.g. calibrate): $VTWCTL_DATA_DIR/videomme holds the parquet files and the videos."""
    root = tmp_path_factory.mktemp("all")
    (root / "videomme").symlink_to(vmme_dir, target_is_directory=True)
    monkeypatch.setenv("VTWCTL_DATA_DIR", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    samples = get("videomme").load("test", limit=1)
    assert samples[0].id == "001-1" and samples[0].video.shape[0] == 8
