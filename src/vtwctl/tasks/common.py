"""What the benchmark tasks share: the one loading path, the calibration pseudo-split, prompt pieces,
the lenient parsers (``--scoring lenient``) and metric helpers.

* ``open_dataset``: a split from a local parquet file/directory, a hub id, or the local Hugging Face
  cache (never waiting on the network when the hub is unreachable).
* ``open_rows``: a task's split as a lazily decoded ``SampleSet`` (ids from undecoded key columns).
* ``parse_letter`` / ``parse_yes_no``: the lenient readings of an answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import VTWError

CALIB_SPLIT = "calib"
# A row (or group of rows: an image's questions, a video's questions) belongs to the "calib"
# pseudo-split when md5(group key) % CALIB_BUCKETS == 0, i.e. a deterministic ~5% of the test split.
CALIB_BUCKETS = 20

MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."
SHORT_POST_PROMPT = "Answer the question using a single word or phrase."


# --------------------------------------------------------------------------------------- loading
def stable_bucket(key: Any, buckets: int = CALIB_BUCKETS) -> int:
    return int(hashlib.md5(str(key).encode("utf-8")).hexdigest(), 16) % buckets


def in_calib(key: Any) -> bool:
    """Whether the row/group with this key belongs to the ``calib`` pseudo-split."""
    return stable_bucket(key) == 0


def env_dir(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def parquet_files(source: str, split: str) -> list[Path]:
    """The parquet files of ``split`` in a file or directory: ``{split}.parquet``, ``{split}-*.parquet``,
    ``data/{split}-*.parquet``, ``*/{split}-*.parquet`` or ``{split}/*.parquet`` (hub repo layouts)."""
    p = Path(source).expanduser()
    if p.exists() and not p.is_dir():
        from ..files import check_regular

        check_regular(p, "dataset file")
        return [p]
    if p.is_dir():
        files = sorted({*p.glob(f"{split}.parquet"), *p.glob(f"{split}-*.parquet"), *p.glob(f"data/{split}-*.parquet"),
                        *p.glob(f"*/{split}-*.parquet"), *p.glob(f"{split}/*.parquet")})
        if not files:
            raise VTWError(f"no parquet files for split {split!r} in {source}")
        return files
    raise VTWError(f"dataset path not found: {source}")


def is_local(source: str) -> bool:
    """A local path unless it is a non-existent ``org/name`` (a hub dataset id)."""
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.endswith(".parquet"):
        return True
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is None


@contextlib.contextmanager
def offline():
    """Make ``datasets`` / ``huggingface_hub`` use only the local cache (no retries on a dead network)."""
    import datasets.config as dconf

    saved: list[tuple[Any, str, Any]] = []
    targets = [(dconf, "HF_HUB_OFFLINE"), (dconf, "HF_DATASETS_OFFLINE")]
    try:
        import huggingface_hub.constants as hconst

        targets.append((hconst, "HF_HUB_OFFLINE"))
    except ImportError:  # pragma: no cover
        pass
    for mod, name in targets:
        if hasattr(mod, name):
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def _hub_dataset(ids: Sequence[str], config: Any, split: str):
    """``split`` of the first of ``ids`` that loads (local cache first; the hub only if reachable)."""
    import datasets

    from ..loading import hub_reachable

    online = hub_reachable()
    errors = []
    for ds_id in ids:
        cfg = config(ds_id) if callable(config) else config
        try:
            if callable(cfg):  # a loader for repos split over many configs (MMMU/MMMU)
                return cfg(ds_id, split, online)
            with contextlib.nullcontext() if online else offline():
                return datasets.load_dataset(ds_id, cfg, split=split)
        except VTWError:
            raise
        except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
            errors.append((ds_id, exc))
    ds_id, exc = errors[0]
    cfg = config(ds_id) if callable(config) else config
    what = f"{ds_id} ({cfg + ', ' if isinstance(cfg, str) else ''}{split})"
    download = f"hf download --repo-type dataset {ds_id} --local-dir DIR"
    if not online:
        raise VTWError(f"dataset {what} is not in the local cache and the hub cannot be reached; pre-download it "
                       f"({download}) and pass --data-dir DIR (parquet files of the same schema; "
                       "or set VTWCTL_DATA_DIR)")
    raise VTWError(f"cannot load dataset {what} ({_first_line(exc)}); pre-download it ({download}) "
                   "and pass --data-dir DIR (parquet files of the same schema)")


def _check_cache(exc: BaseException, files: Sequence[Path]) -> None:
    """``datasets`` converts parquet files into its cache (``$HF_DATASETS_CACHE``, else under ``$HF_HOME`` or
    ``~/.cache``) before reading them: when loading failed and that cache cannot be written (an unwritable or
    missing ``HOME``, a full disk), that is the cause to name, not the parquet file."""
    import datasets.config as dconf

    from ..files import check_dir_target, environment_error

    cache = Path(str(dconf.HF_DATASETS_CACHE))
    try:
        check_dir_target(cache, "datasets cache")
    except VTWError as bad:
        raise VTWError(f"{bad} (reading {files[0]} goes through it; set HF_DATASETS_CACHE or HF_HOME to a "
                       "writable directory)") from None
    named = str(getattr(exc, "filename", None) or "")
    if named and not any(named == str(f) for f in files):
        what = environment_error(exc) or _first_line(exc)
        raise VTWError(f"cannot read {files[0]}: {what}") from None


def open_dataset(ids: Sequence[str], config: Any, split: str, source: str | None, *, subdir: str | None = None,
                 name: str | None = None, columns: Sequence[str] = ()):
    """The ``datasets.Dataset`` of ``split`` (rows are decoded when read).

    ``source``: None (``$VTWCTL_DATA_DIR/{name}`` when it exists, else the local HF cache / the hub,
    trying each of ``ids``), a hub id, or a local parquet file / directory (see ``parquet_files``);
    when a directory has a ``subdir`` folder (the config's folder in a full hub download, e.g.
    ``ScienceQA-IMG``) only that folder is read. ``columns`` must all be there.
    """
    import datasets

    datasets.disable_progress_bars()  # the library never prints: no "Generating train split" bars on stderr
    root_env = env_dir("VTWCTL_DATA_DIR")
    if source is None and name and root_env is not None and (root_env / name).exists():
        source = str(root_env / name)
    if source is not None and is_local(str(source)):
        root = Path(str(source)).expanduser()
        if subdir and root.is_dir() and (root / subdir).is_dir():
            root = root / subdir
        files = parquet_files(str(root), split)
        try:
            ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        except Exception as exc:  # not parquet, truncated, schemas that differ between files
            _check_cache(exc, files)
            raise VTWError(f"cannot read {files[0] if len(files) == 1 else root}: {_first_line(exc)}") from None
        where = str(files[0]) if len(files) == 1 else f"{root} ({len(files)} files)"
    else:
        ds = _hub_dataset([str(source)] if source is not None else ids, config, split)
        where = str(source or ids[0])
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise VTWError(f"{where} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} that "
                       f"{name or 'the task'} reads (it has: {', '.join(ds.column_names) or 'none'}); the files "
                       "must have the hub dataset's schema (docs/tasks.md)")
    return ds


def _light_rows(ds, columns: Sequence[str], split: str) -> list[dict]:
    """``columns`` of every row, images left undecoded, each with ``_row`` and ``_split``."""
    import datasets

    cols = [c for c in columns if c in ds.column_names]
    if not cols:
        return [{"_row": i, "_split": split} for i in range(len(ds))]
    light = ds.select_columns(cols)
    for c in cols:
        if isinstance(light.features[c], datasets.Image):
            light = light.cast_column(c, datasets.Image(decode=False))
    return [{**row, "_row": i, "_split": split} for i, row in enumerate(light)]


def open_rows(task, split: str, source: str | None):
    """``task``'s ``split`` as a ``SampleSet``; ``calib`` (when the task has a ``calib_key``) is the
    hash-selected subset of the test rows. Only key columns are read until a sample is decoded.
    Documents (and the key-column rows ids are made from) carry ``_row`` (the index in the split) and
    ``_split`` (the split read: ``test`` for ``calib``)."""
    from . import Sample, SampleSet

    real_split = task.test_split if (split == CALIB_SPLIT and task.calib_key is not None) else split
    ds = open_dataset(task.dataset_ids, task.dataset_config, real_split, source, subdir=task.subdir, name=task.name,
                      columns=task.columns)
    light = _light_rows(ds, task.key_columns, real_split)
    positions = [i for i, row in enumerate(light)
                 if (task.row_filter is None or task.row_filter(row))
                 and (real_split == split or in_calib(task.calib_key(row)))]
    ids = task.doc_ids(light) if task.doc_ids is not None else [task.doc_to_id(row) for row in light]

    def make(i: int) -> Sample:
        doc = {**ds[i], "_row": i, "_split": real_split}
        video = task.doc_to_video(doc, source) if task.doc_to_video is not None else None
        images = task.doc_to_visual(doc) if task.doc_to_visual is not None else []
        return Sample(id=ids[i], prompt=task.doc_to_text(doc), answer=task.doc_to_target(doc), images=images,
                      video=video, meta=task.doc_to_meta(doc) if task.doc_to_meta is not None else {})

    check = (lambda i: task.video_check(light[i], source)) if task.video_check is not None else None
    return SampleSet(ids, make, positions, check)


def rgb(image: Any) -> Any:
    """``image.convert("RGB")`` (lmms-eval's doc_to_visual), None stays None."""
    if image is None:
        return None
    return image.convert("RGB") if hasattr(image, "convert") else image


def is_missing(value: Any) -> bool:
    """None, NaN, empty or the string "nan" (how MMBench marks absent hints and options)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and (value.strip() == "" or value.strip().lower() == "nan")


# --------------------------------------------------------------------------------------- prompts
def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def options_block(options: Sequence[str]) -> str:
    """"A. first\\nB. second..." (lmms-eval's choices_str)."""
    return "\n".join(f"{letter}. {opt}" for letter, opt in zip(letters(len(options)), options))


# ------------------------------------------------------------------------------- lenient parsing
_PUNCT = str.maketrans("", "", string.punctuation)
_ANSWER_IS = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|would be|should be|:)?\s*(?i:option|choice)?\s*[:\-]?\s*"
    r"\(?\s*([A-Z])\b(?![a-z'])"
)


def _option_letter_alone(answer: str, choices: str) -> str:
    """One option letter standing alone in the answer (bare, "X.", "(X)", ...: MMBench's forms)."""
    from .lmms_rules import _OPTION_FORMS, _count

    tokens = [x.strip() for x in answer.split()]
    if _count(tokens, choices) == 1 and not ("A" in tokens and len(tokens) > 3):
        return next(ch for ch in choices if ch in tokens)
    for pre, suf in _OPTION_FORMS:
        if _count(tokens, choices, pre, suf) == 1:
            return next(ch for ch in choices if pre + ch + suf in tokens)
    return ""


def _option_text(answer: str, options: Mapping[str, str]) -> str:
    """Exactly one option's text occurs in the answer as whole words (options of one character, e.g.
    "a" or "1", are never matched as text: they would be found inside any word)."""
    low = answer.lower()
    hits = []
    for k, v in options.items():
        text = str(v).strip().lower()
        if len(text) >= 2 and re.search(rf"(?<!\w){re.escape(text)}(?!\w)", low):
            hits.append(k)
    return hits[0] if len(hits) == 1 else ""


def parse_letter(output: str, choices: Sequence[str], options: Mapping[str, str] | None = None) -> str:
    """The option letter in ``output`` ("" when none can be found), read leniently.

    In order: the whole answer is a letter (any case, punctuation ignored); "X." / "X)" / "(X)" at the
    start; "the answer is (X)" / "Answer: X"; one option letter standing alone; exactly one option's
    text (whole words, two characters or more).
    """
    choices = "".join(choices)
    text = (output or "").strip()
    if not text:
        return ""
    bare = text.translate(_PUNCT).strip()
    if len(bare) == 1 and bare.upper() in choices:
        return bare.upper()
    m = re.match(r"^\(?([A-Z])(?:[.):]|\s*$)", text)
    if m and m.group(1) in choices:
        return m.group(1)
    for m in _ANSWER_IS.finditer(text):
        if m.group(1) in choices:
            return m.group(1)
    found = _option_letter_alone(text, choices)
    if found:
        return found
    if options:
        return _option_text(text, {k: v for k, v in options.items() if k in choices})
    return ""


def parse_yes_no(output: str) -> str:
    """"yes", "no" or "other", read leniently: lmms-eval's MME rule, then a "no"/"not" word in the first
    sentence (no) or a "yes" word (yes)."""
    from .lmms_rules import mme

    pred = mme(output or "")
    if pred != "other":
        return pred
    first = (output or "").strip().split(".")[0].replace(",", " ").lower()
    words = re.findall(r"[a-z']+", first)
    if "no" in words or "not" in words:
        return "no"
    if "yes" in words:
        return "yes"
    return "other"


# --------------------------------------------------------------------------------------- metrics
def gold(record: dict) -> str:
    """The reference answer of a record: ``target`` in the records ``evaluate`` writes (where ``answer`` is
    the model's raw text), else ``answer``."""
    return str(record["target"] if "target" in record else record["answer"])


def fraction(values: Sequence[bool]) -> float:
    return sum(bool(v) for v in values) / len(values) if values else 0.0


def grouped(records: Sequence[dict], key: str | Callable[[dict], Any]) -> dict[str, list[dict]]:
    """Records by ``meta[key]`` (or ``key(record)``), groups sorted by name."""
    out: dict[str, list[dict]] = {}
    for r in records:
        g = key(r) if callable(key) else r["meta"].get(key)
        out.setdefault(str(g), []).append(r)
    return dict(sorted(out.items()))


def grouped_accuracy(records: Sequence[dict], key: str, prefix: str = "accuracy_",
                     correct: Callable[[dict], bool] = lambda r: bool(r["correct"])) -> dict[str, float]:
    """``{prefix}{group}: accuracy`` over ``meta[key]`` groups (sorted)."""
    return {f"{prefix}{g}": fraction([correct(r) for r in recs]) for g, recs in grouped(records, key).items()}
