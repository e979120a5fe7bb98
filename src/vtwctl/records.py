"""The calibration records: the user's store written by ``vtwctl calibrate`` and the one rule
``--k auto`` follows over it and the shipped profiles' records.

Records live in the user's calibration store (``--calibration-dir``, ``$VTWCTL_CALIBRATION_DIR``, or the
user cache dir; ``--profile-dir`` and ``$VTWCTL_PROFILE_DIR`` are the old names, still read), one JSON
file per model; the shipped profiles (``vtwctl.profiles``) carry known K records too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import VTWError
from .profiles import find

# -- user store for calibration records ---------------------------------------------------------
# A store file is {"model": NAME, "calibrations": [record, ...]} (oldest first). It is read and checked
# before any model loads, written atomically (temporary file + rename) under the store's lock file,
# so two calibrations finishing together both land and neither corrupts the file.
LOCK_NAME = ".lock"


def user_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = _env_dir()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vtwctl" / "profiles"


ENV_VARS = ("VTWCTL_CALIBRATION_DIR", "VTWCTL_PROFILE_DIR")  # the store's environment variable, then its old name


def _env_dir() -> str | None:
    return next((os.environ[v] for v in ENV_VARS if os.environ.get(v)), None)


def _where(override) -> str:
    if override:
        return "--calibration-dir"
    name = next((v for v in ENV_VARS if os.environ.get(v)), None)
    return f"${name}" if name else "the default calibration store"


def _safe(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in model)


def _user_file(model: str, store: Path) -> Path:
    return store / f"{_safe(model)}.json"


def _store(profile_dir) -> Path:
    store = user_dir(profile_dir)
    if store.exists() and not store.is_dir():
        raise VTWError(f"calibration store {store} ({_where(profile_dir)}) is a file, not a directory")
    return store


def _check_record(rec: Any, path: Path, i: int) -> None:
    bad = None
    if not isinstance(rec, dict):
        bad = "is not an object"
    elif not isinstance(rec.get("dataset"), str):
        bad = "has no dataset"
    elif rec.get("k") is not None and (isinstance(rec["k"], bool) or not isinstance(rec["k"], int) or rec["k"] < 0):
        bad = f"has an invalid k ({rec['k']!r})"
    elif rec.get("eta") is not None and (isinstance(rec["eta"], bool) or not isinstance(rec["eta"], (int, float))
                                         or not math.isfinite(rec["eta"]) or rec["eta"] <= 0):
        bad = f"has an invalid eta ({rec['eta']!r})"
    if bad:
        raise VTWError(f"calibration store {path}: record {i} {bad}; fix or remove the file")


def read_store(path: Path) -> dict | None:
    """The checked contents of one store file, or None if it does not exist."""
    if not path.exists():
        return None
    if path.is_dir():
        raise VTWError(f"calibration store {path} is a directory, not a file")
    from .files import check_regular

    check_regular(path, "calibration store file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise VTWError(f"calibration store {path} is not a text file; fix or remove it") from None
    except json.JSONDecodeError as exc:
        raise VTWError(f"calibration store {path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
                       "fix or remove it") from None
    except OSError as exc:
        raise VTWError(f"cannot read calibration store {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("calibrations"), list):
        raise VTWError(f'calibration store {path} has the wrong shape: expected {{"model": ..., '
                       f'"calibrations": [...]}}, found {type(data).__name__}; fix or remove it')
    for i, rec in enumerate(data["calibrations"]):
        _check_record(rec, path, i)
    return data


def check_store(model: str, profile_dir: str | os.PathLike | None = None, write: bool = False) -> Path:
    """Check the store (and ``model``'s file in it) before any work: readable and well formed, and
    writable when ``write``. Returns the path of the model's store file."""
    from .files import check_dir_target, check_file_target

    store = _store(profile_dir)
    path = _user_file(model, store)
    read_store(path)
    if write:
        check_dir_target(store, "calibration store")
        check_file_target(path, "calibration store")
    return path


def user_records(model: str, profile_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The user's calibration records for ``model``, oldest first, each with its ``origin`` (the file)."""
    path = _user_file(model, _store(profile_dir))
    data = read_store(path)
    return [dict(r, origin=str(path)) for r in data["calibrations"]] if data else []


def shipped_records(model: str) -> list[dict[str, Any]]:
    prof = find(model)
    if not prof:
        return []
    origin = f"shipped profile {prof['name']}"
    return [dict(r, origin=origin) for r in prof.get("calibrations", [])]


def records(model: str, profile_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Calibration records for ``model``: the shipped ones, then the user's (newest last)."""
    return [*shipped_records(model), *user_records(model, profile_dir)]


def user_models(profile_dir: str | os.PathLike | None = None) -> list[str]:
    """Models that have a file in the user's store."""
    store = _store(profile_dir)
    if not store.is_dir():
        return []
    out = []
    for path in sorted(store.glob("*.json")):
        data = read_store(path)
        out.append(str(data.get("model") or path.stem))
    return out


def _identity(rec: dict) -> str:
    """What makes two records the same calibration: everything but when and with which versions it ran
    (floats to 6 significant digits)."""
    def norm(x):
        if isinstance(x, float):
            return float(f"{x:.6g}")
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if isinstance(x, list):
            return [norm(v) for v in x]
        return x

    return json.dumps(norm({k: v for k, v in rec.items() if k not in ("date", "versions", "origin")}),
                      sort_keys=True, default=str)


def save_record(model: str, record: dict[str, Any], profile_dir: str | os.PathLike | None = None) -> Path:
    """Add a calibration record to the user's store (an identical earlier one is replaced, so a
    repeated calibration is one record, the newest); atomic, under the store's lock."""
    from .files import atomic_write, dumps, lock

    store = _store(profile_dir)
    store.mkdir(parents=True, exist_ok=True)
    path = _user_file(model, store)
    record = {k: v for k, v in record.items() if k != "origin"}
    with lock(store / LOCK_NAME, "calibration store lock", wait=True):
        data = read_store(path) or {"model": model, "calibrations": []}
        key = _identity(record)
        data["calibrations"] = [r for r in data["calibrations"] if _identity(r) != key] + [record]
        atomic_write(path, dumps(data, indent=2) + "\n")
    return path


def auto_k(model: str, dataset: str | None = None, profile_dir: str | os.PathLike | None = None,
           eta: float | None = None) -> dict[str, Any] | None:
    """The record ``--k auto`` uses: the one rule, the same for every command (``vtwctl.spec.K``).

    Only records with a K count, and with ``eta`` only those calibrated at it (or without an eta).
    1. the user's newest record for ``dataset`` (for None: for any dataset);
    2. else the shipped profile's record for ``dataset``, the profile's default eta first;
    3. else a record for every task (``"*"``): the user's newest, then the shipped one (for no dataset:
       the shipped ``"*"`` record, then any shipped record).
    None when there is none. The record carries its ``origin`` (the store file or the shipped profile).
    """
    def usable(r):
        return r.get("k") is not None and (eta is None or r.get("eta") is None
                                            or abs(float(r["eta"]) - eta) <= 1e-12)

    def pick(recs, want):
        return next((r for r in recs if want is None or r.get("dataset") == want), None)

    user = [r for r in reversed(user_records(model, profile_dir)) if usable(r)]
    shipped = [r for r in reversed(shipped_records(model)) if usable(r)]
    default_eta = (find(model) or {}).get("default_eta")
    shipped.sort(key=lambda r: r.get("eta") != default_eta)  # the profile's own eta first (stable sort)
    order = [(user, dataset), (shipped, dataset), (user, "*"), (shipped, "*")] if dataset is not None \
        else [(user, None), (shipped, "*"), (shipped, None)]
    for recs, want in order:
        rec = pick(recs, want)
        if rec is not None:
            return rec
    return None
