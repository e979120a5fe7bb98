"""Video-MME (lmms-eval ``videomme``, frames only, no subtitles): multiple choice on YouTube videos.

Prompt (the official Video-MME prompt that lmms-eval's ``videomme_doc_to_text`` builds):
``"Select the best answer to the following multiple-choice question based on the video and the
subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\\n{question}\\n{options,
one per line, already "A. ..."}\\nThe best answer is:"``.

Videos are not in the parquet files (``videoID`` names a YouTube video). They are looked up, for each
``videoID``, as ``{videoID}.mp4`` / ``.MP4`` / ``.mkv`` (needs PyAV), ``{videoID}.npy`` (frames
[T, H, W, 3]) or a folder ``{videoID}/`` of frame images, in: ``DIR/data``, ``DIR/videos`` and ``DIR``
for ``--data-dir DIR``; then ``$VTWCTL_VIDEOMME_DIR`` and ``$VTWCTL_DATA_DIR/videomme`` (same
sub-folders); then lmms-eval's cache
``$HF_HOME/videomme/data``. ``NUM_FRAMES`` (8, Video-LLaVA's setting; ``$VTWCTL_VIDEO_FRAMES``
overrides) evenly spaced frames are read per video (once per video: its 3 questions share them).

Parsing: ``common.parse_letter`` (letter / "answer is X" / MMBench rules / option text), falling back
to lmms-eval's ``extract_characters_regex`` (answer prefixes removed, first standalone A-D).
Metrics: accuracy, per duration (short / medium / long), per domain and per task type.

Only a ``test`` split; calibration uses the ``calib`` pseudo-split: the videos (all their questions)
whose md5(videoID) % 20 == 0.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import VTWError
from . import Sample, Task
from .common import CALIB_SPLIT, env_dir, fraction, grouped_accuracy, load_rows, parse_letter

DATASET_IDS = ("lmms-lab/Video-MME",)
NUM_FRAMES = 8
OPTION_PROMPT = ("Select the best answer to the following multiple-choice question based on the video and the "
                 "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
POST_PROMPT = "The best answer is:"
SUFFIXES = (".mp4", ".MP4", ".mkv", ".npy")
ANSWER_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option isThe correct option is", "Best answer:Best option:")  # sic (lmms-eval)


def build_prompt(row: dict) -> str:
    options = "\n".join(str(o) for o in row["options"])
    return f"{OPTION_PROMPT}\n{row['question']}\n{options}\n{POST_PROMPT}"


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


def _load(split: str, limit: int | None = None, seed: int = 0, source: str | None = None) -> list[Sample]:
    from ..media import read_video

    rows = load_rows(DATASET_IDS, None, split, limit, source, name="videomme", key_columns=("videoID",),
                     calib_key=lambda row, i: row.get("videoID", i), subdir="videomme")
    dirs = video_dirs(source)
    n = frames_count()
    cache: dict[str, object] = {}
    samples = []
    for row in rows:
        vid = str(row["videoID"])
        if vid not in cache:
            path = find_video(vid, dirs)
            if path is None:
                where = ", ".join(str(d) for d in dirs[:3])
                raise VTWError(f"video {vid} (question {row['question_id']}) not found as {vid}.mp4/.mkv/.npy "
                               f"or a frame folder in {where}...; unzip the Video-MME videos into DIR/data "
                               "and pass --data-dir DIR (or set VTWCTL_VIDEOMME_DIR)")
            cache[vid] = read_video(path, num_frames=n)
        options = [str(o) for o in row["options"]]
        samples.append(Sample(
            id=str(row["question_id"]),
            prompt=build_prompt(row),
            answer=str(row["answer"]).strip(),
            video=cache[vid],
            meta={"duration": row.get("duration"), "domain": row.get("domain"),
                  "sub_category": row.get("sub_category"), "task_type": row.get("task_type"), "videoID": vid,
                  "options": {o[0]: re.sub(r"^[A-D]\.\s*", "", o).rstrip(".") for o in options if o}},
        ))
    return samples


def extract_characters_regex(s: str) -> str:
    """lmms-eval's Video-MME answer extraction, with A-D matched as standalone letters only."""
    s = (s or "").strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search(r"\b[ABCD]\b", s):
        return ""
    m = re.search(r"\b[ABCD]\b", s)
    return m[0] if m else ""


def _parse(sample: Sample, output: str) -> str:
    return parse_letter(output, "ABCD", sample.meta.get("options")) or extract_characters_regex(output)


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
    load=_load,
    parse=_parse,
    score=_score,
    metrics=_metrics,
    max_new_tokens=16,
    splits=("test", CALIB_SPLIT),
    dataset_ids=DATASET_IDS,
)
