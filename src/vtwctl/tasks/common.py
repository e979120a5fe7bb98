"""Helpers shared by the lmms-eval style benchmark tasks (sqa, ai2d, mmmu, mmbench, pope, mme, videomme).

* ``load_rows``: rows of a split from a local parquet directory/file, a hub id, or the local Hugging
  Face cache (never waiting on the network when the hub is unreachable), plus the ``calib``
  pseudo-split for benchmarks that only publish a test split.
* ``parse_letter``: the option letter in a model's free-form answer (lmms-eval / MMBench rules).
* ``parse_yes_no``: yes / no / other (the MME "Otter" rule, then LLaVA's POPE rule).
* small metric helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import string
from collections.abc import Callable, Sequence
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


def _parquet_files(source: str, split: str) -> list[Path]:
    p = Path(source).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted({*p.glob(f"{split}.parquet"), *p.glob(f"{split}-*.parquet"), *p.glob(f"data/{split}-*.parquet"),
                        *p.glob(f"*/{split}-*.parquet"), *p.glob(f"{split}/*.parquet")})
        if not files:
            raise VTWError(f"no parquet files for split {split!r} in {source}")
        return files
    raise VTWError(f"dataset path not found: {source}")


def _is_local(source: str) -> bool:
    """A local path unless it is a non-existent ``org/name`` (a hub dataset id)."""
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.endswith(".parquet"):
        return True
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is None


@contextlib.contextmanager
def _offline():
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


def _hub_dataset(ids: Sequence[str], config: str | None | Callable[[str], Any], split: str):
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
            ctx = contextlib.nullcontext() if online else _offline()
            with ctx:
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


def load_rows(ids: Sequence[str], config: Any, split: str, limit: int | None, source: str | None,
              *, calib_key: Callable[[dict, int], Any] | None = None, calib_from: str = "test",
              key_columns: Sequence[str] = (), row_filter: Callable[[dict], bool] | None = None,
              subdir: str | None = None, name: str | None = None) -> list[dict]:
    """Rows of ``split`` (the first ``limit``) as dicts with PIL images, in the dataset's order; each
    row gets ``"_row"``, its index in the split.

    ``source``: None (the local HF cache / the hub, trying each of ``ids``), a hub id, or a local
    parquet file / directory (``{split}.parquet``, ``{split}-*.parquet``, ``data/{split}-*.parquet``,
    ``*/{split}-*.parquet``, ``{split}/*.parquet``); when the directory has a ``subdir`` folder (the
    config's folder in a full hub download, e.g. ``ScienceQA-IMG``) only that folder is read.
    With ``source`` None, ``$VTWCTL_DATA_DIR/{name}`` is used when it exists (a way to give local data to
    commands without a --data-dir option, e.g. calibrate).
    ``split == "calib"`` (when ``calib_key`` is given) selects the rows of ``calib_from`` whose
    ``calib_key(row, index)`` falls in the reserved hash bucket; ``row_filter(row)`` drops rows. Both
    only see ``key_columns`` (images undecoded), so nothing else is decoded for rows left out.
    """
    import datasets

    real_split = calib_from if (split == CALIB_SPLIT and calib_key is not None) else split
    root_env = env_dir("VTWCTL_DATA_DIR")
    if source is None and name and root_env is not None and (root_env / name).exists():
        source = str(root_env / name)
    if source is not None and _is_local(str(source)):
        root = Path(str(source)).expanduser()
        if subdir and root.is_dir() and (root / subdir).is_dir():
            root = root / subdir
        files = _parquet_files(str(root), real_split)
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    elif source is not None:
        ds = _hub_dataset([str(source)], config, real_split)
    else:
        ds = _hub_dataset(ids, config, real_split)
    indices = list(range(len(ds)))
    if real_split != split or row_filter is not None:
        cols = [c for c in key_columns if c in ds.column_names]
        light = ds.select_columns(cols) if cols else None
        if light is not None:
            for c in cols:
                if isinstance(light.features[c], datasets.Image):
                    light = light.cast_column(c, datasets.Image(decode=False))
        keep = []
        for i in indices:
            row = light[i] if light is not None else {}
            if row_filter is not None and not row_filter(row):
                continue
            if real_split != split and not in_calib(calib_key(row, i)):
                continue
            keep.append(i)
            if limit is not None and len(keep) >= limit:
                break
        indices = keep
    if limit is not None:
        indices = indices[: max(int(limit), 0)]
    sub = ds.select(indices)
    return [{**row, "_row": i} for i, row in zip(indices, sub)]


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


# --------------------------------------------------------------------------------------- parsing
_PUNCT = str.maketrans("", "", string.punctuation)
_ANSWER_IS = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|would be|should be|:)?\s*(?i:option|choice)?\s*[:\-]?\s*"
    r"\(?\s*([A-Z])\b(?![a-z'])"
)


def _count(tokens: Sequence[str], choices: str, prefix: str = "", suffix: str = "") -> int:
    return sum(1 for c in choices if prefix + c + suffix in tokens)


def _infer_option(answer: str, choices: str) -> str:
    """MMBench's ``can_infer_option``: one option letter standing alone (or in brackets, with a dot...)."""
    tokens = [x.strip() for x in answer.split()]
    if _count(tokens, choices) == 1 and not ("A" in tokens and len(tokens) > 3):
        for ch in choices:
            if ch in tokens:
                return ch
    for pre, suf in (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                     (":", ","), (":", "."), (":", ")"), (":", ").")):
        if _count(tokens, choices, pre, suf) == 1:
            for ch in choices:
                if pre + ch + suf in tokens:
                    return ch
    return ""


def _infer_text(answer: str, options: dict[str, str]) -> str:
    """MMBench's ``can_infer_text``: exactly one option's text appears in the answer."""
    low = answer.lower()
    hits = [k for k, v in options.items() if str(v).strip() and str(v).lower() in low]
    return hits[0] if len(hits) == 1 else ""


def parse_letter(output: str, choices: Sequence[str], options: dict[str, str] | None = None) -> str:
    """The option letter in ``output`` ("" when none can be found).

    In order: the whole answer is a letter (any case, punctuation ignored: lmms-eval's exact_match with
    ignore_case/ignore_punctuation); "X." / "X)" / "(X)" at the start (LLaVA's ScienceQA rule); "the
    answer is (X)" / "Answer: X"; MMBench's can_infer_option, then can_infer_text over ``options``.
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
    found = _infer_option(text, choices)
    if found:
        return found
    if options:
        return _infer_text(text, {k: v for k, v in options.items() if k in choices})
    return ""


def parse_yes_no(output: str) -> str:
    """"yes", "no" or "other".

    lmms-eval's MME rule (from Otter: lowercase, drop dots; "yes"/"no"/"y"/"n"; else "yes"/"no" within
    the first 4 characters), then LLaVA's POPE rule on the first sentence ("no"/"not" -> no) and an
    explicit "yes" word -> yes.
    """
    pred = (output or "").lower().strip().replace(".", "")
    if pred in ("yes", "no"):
        return pred
    if len(pred) == 1:
        return {"y": "yes", "n": "no"}.get(pred, "other")
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
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


def grouped_accuracy(records: Sequence[dict], key: str, prefix: str = "accuracy_") -> dict[str, float]:
    """``{prefix}{group}: accuracy`` over ``meta[key]`` groups (sorted)."""
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(str(r["meta"].get(key)), []).append(bool(r["correct"]))
    return {f"{prefix}{g}": fraction(v) for g, v in sorted(groups.items())}


def env_dir(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None
