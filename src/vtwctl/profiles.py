"""Model profiles: the shipped ``profiles/*.json`` files and the user's calibration records.

A shipped profile describes a known model (hub id, family, dimensions, vision tokens per image,
default eta, known K records). Calibration records written by ``vtwctl calibrate`` live in the
user's profile store (``$VTWCTL_PROFILE_DIR`` or the user cache dir), one JSON file per model.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import VTWError


def shipped_dir() -> Path:
    """Where the shipped profiles are: inside the installed package, or the checkout's profiles/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / "profiles", here.parents[1] / "profiles"):
        if candidate.is_dir():
            return candidate
    raise VTWError("the shipped profiles/ directory is missing from this installation")


@lru_cache(maxsize=1)
def _shipped() -> dict[str, dict]:
    out = {}
    for path in sorted(shipped_dir().glob("*.json")):
        data = json.loads(path.read_text())
        out[data["name"]] = data
    return out


def names() -> list[str]:
    """Short names of every shipped profile."""
    return sorted(_shipped())


def find(spec: str) -> dict | None:
    """The shipped profile whose name, hub id or alias is ``spec`` (case-insensitive), or None."""
    key = spec.strip().lower()
    for prof in _shipped().values():
        ids = [prof["name"], prof.get("hub_id") or "", *prof.get("aliases", [])]
        if key in (i.lower() for i in ids if i):
            return prof
    return None


def get(name: str) -> dict:
    prof = find(name)
    if prof is None:
        raise VTWError(f"unknown model {name!r}; known short names: {', '.join(names())}")
    return prof


# -- user store for calibration records ---------------------------------------------------------
def user_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get("VTWCTL_PROFILE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vtwctl" / "profiles"


def _user_file(model: str, store: Path) -> Path:
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in model)
    return store / f"{safe}.json"


def records(model: str, profile_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Calibration records for ``model``: the user's (newest last), then the shipped ones."""
    path = _user_file(model, user_dir(profile_dir))
    user = json.loads(path.read_text())["calibrations"] if path.exists() else []
    prof = find(model)
    return [*(prof.get("calibrations", []) if prof else []), *user]


def save_record(model: str, record: dict[str, Any], profile_dir: str | os.PathLike | None = None) -> Path:
    """Append a calibration record to the user's store (atomic write)."""
    store = user_dir(profile_dir)
    store.mkdir(parents=True, exist_ok=True)
    path = _user_file(model, store)
    data = json.loads(path.read_text()) if path.exists() else {"model": model, "calibrations": []}
    data["calibrations"].append(record)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def k_for(model: str, dataset: str, eta: float | None = None,
          profile_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The newest calibration record of ``model`` for ``dataset`` (and ``eta`` if given), or None."""
    for rec in reversed(records(model, profile_dir)):
        if rec.get("dataset") != dataset or rec.get("k") is None:
            continue
        if eta is not None and rec.get("eta") is not None and abs(float(rec["eta"]) - eta) > 1e-12:
            continue
        return rec
    return None
