"""Video-MME (lmms-eval ``videomme``, frames only, no subtitles): multiple choice on YouTube videos.

Prompt (lmms-eval's ``videomme_doc_to_text`` with its default kwargs):
``"Select the best answer to the following multiple-choice question based on the video and the
subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\\n{question}\\n{options,
one per line, already "A. ..."}\\n\\nAnswer with the option's letter from the given choices directly."``
("The best answer is:" is only lmms-eval's ``llava_vid`` variant).

Videos are not in the parquet files (``videoID`` names a YouTube video). They are looked up, for each
``videoID``, as ``{videoID}.mp4`` / ``.MP4`` / ``.mkv`` (needs PyAV), ``{videoID}.npy`` (frames
[T, H, W, 3]) or a folder ``{videoID}/`` of frame images, in: ``DIR/data``, ``DIR/videos`` and ``DIR``
for ``--data-dir DIR``; then ``$VTWCTL_VIDEOMME_DIR`` and ``$VTWCTL_DATA_DIR/videomme`` (same
sub-folders); then lmms-eval's cache ``$HF_HOME/videomme/data``. ``NUM_FRAMES`` (8, Video-LLaVA's
setting; ``$VTWCTL_VIDEO_FRAMES`` overrides) evenly spaced frames are read per video, once for the
questions of a video, and only for the samples that run (a missing video is reported before any
model loads).

Scoring ``lmms-eval``: lmms-eval's current extractor (``extract_mcq_answer`` over A-D: a leading or
final letter, "the answer is X", "(X)", "X." ... ranked); ``lenient``: ``parse_letter`` (letter /
"answer is X" / option text), then that extractor. Metrics: accuracy, per duration (short / medium /
long), per domain and per task type.

Only a ``test`` split; calibration uses the ``calib`` pseudo-split: the videos (all their questions)
whose md5(videoID) % 20 == 0.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from ..errors import VTWError
from . import Sample, Task
from .common import CALIB_SPLIT, MC_POST_PROMPT, env_dir, fraction, grouped_accuracy, parse_letter
from .lmms_rules import extract_mcq_answer

DATASET_IDS = ("lmms-eval/Video-MME", "lmms-lab/Video-MME")
NUM_FRAMES = 8
OPTION_PROMPT = ("Select the best answer to the following multiple-choice question based on the video and the "
                 "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
POST_PROMPT = "\n" + MC_POST_PROMPT
SUFFIXES = (".mp4", ".MP4", ".mkv", ".npy")


def doc_to_text(doc: dict) -> str:
    options = "\n".join(str(o) for o in doc["options"])
    return f"{OPTION_PROMPT}\n{doc['question']}\n{options}\n{POST_PROMPT}"


def video_dirs(source: str | None) -> list[Path]:
    roots: list[Path] = []
    if source is not None and Path(source).expanduser().exists():
        p = Path(source).expanduser()
        roots.append(p if p.is_dir() else p.parent)
    videomme_env, data_env = env_dir("VTWCTL_VIDEOMME_DIR"), env_dir("VTWCTL_DATA_DIR")
    if videomme_env is not None:
        roots.append(videomme_env)
    if data_env is not None:
        roots.append(data_env / "videomme")
    dirs = [d for r in roots for d in (r / "data", r / "videos", r)]
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface/")).expanduser()
    dirs.append(hf_home / "videomme" / "data")
    return dirs


def find_video(video_id: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for suffix in SUFFIXES:
            f = d / f"{video_id}{suffix}"
            if f.is_file():
                return f
        if (d / video_id).is_dir():
            return d / video_id
    return None


def frames_count() -> int:
    try:
        return max(1, int(os.environ.get("VTWCTL_VIDEO_FRAMES", NUM_FRAMES)))
    except ValueError:
        value = os.environ["VTWCTL_VIDEO_FRAMES"]
        raise VTWError(f"VTWCTL_VIDEO_FRAMES must be a positive integer, got {value!r}") from None


def _missing(vid: str, qid: str, dirs: list[Path]) -> VTWError:
    where = ", ".join(str(d) for d in dirs[:3])
    return VTWError(f"video {vid} (question {qid}) not found as {vid}.mp4/.mkv/.npy or a frame folder in {where}...; "
                    "unzip the Video-MME videos into DIR/data and pass --data-dir DIR (or set VTWCTL_VIDEOMME_DIR)")


def video_check(row: dict, source: str | None) -> None:
    dirs = video_dirs(source)
    if find_video(str(row["videoID"]), dirs) is None:
        raise _missing(str(row["videoID"]), str(row["question_id"]), dirs)


@functools.lru_cache(maxsize=2)  # the questions of a video are adjacent: its frames are read once
def _frames(path: str, n: int):
    from ..media import read_video

    return read_video(Path(path), num_frames=n)


def doc_to_video(doc: dict, source: str | None):
    vid = str(doc["videoID"])
    dirs = video_dirs(source)
    path = find_video(vid, dirs)
    if path is None:
        raise _missing(vid, str(doc["question_id"]), dirs)
    return _frames(str(path), frames_count())


def doc_to_meta(doc: dict) -> dict:
    options = [str(o) for o in doc["options"]]
    return {"duration": doc.get("duration"), "domain": doc.get("domain"), "sub_category": doc.get("sub_category"),
            "task_type": doc.get("task_type"), "videoID": str(doc["videoID"]),
            "options": {o[0]: re.sub(r"^[A-D]\.\s*", "", o).rstrip(".") for o in options if o}}


def _lenient(sample: Sample, output: str) -> str:
    return parse_letter(output, "ABCD", sample.meta.get("options")) or extract_mcq_answer(output, "ABCD")


def _score(sample: Sample, parsed: str) -> bool:
    return parsed.lower() == sample.answer.lower()


def _metrics(records: list[dict]) -> dict:
    out: dict[str, float] = {"accuracy": fraction([r["correct"] for r in records])}
    out.update(grouped_accuracy(records, "duration"))
    out.update(grouped_accuracy(records, "domain", "accuracy_domain_"))
    out.update(grouped_accuracy(records, "task_type", "accuracy_task_"))
    return out


TASK = Task(
    name="videomme",
    description="Video-MME (lmms-eval videomme, no subtitles): video multiple choice, accuracy per duration",
    test_split="test",
    calibration_split=CALIB_SPLIT,
    doc_to_text=doc_to_text,
    doc_to_video=doc_to_video,
    video_check=video_check,
    doc_to_target=lambda doc: str(doc["answer"]).strip(),
    doc_to_id=lambda row: str(row["question_id"]),
    doc_to_meta=doc_to_meta,
    parsers={"lmms-eval": lambda sample, output: extract_mcq_answer(output, "ABCD"), "lenient": _lenient},
    score=_score,
    aggregation=_metrics,
    generation_kwargs={"max_new_tokens": 16},
    splits=("test", CALIB_SPLIT),
    dataset_ids=DATASET_IDS,
    subdir="videomme",
    key_columns=("videoID", "question_id"),
    columns=("videoID", "question_id", "question", "options", "answer"),
    calib_key=lambda row: row.get("videoID", row["_row"]),
)
