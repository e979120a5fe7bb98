"""Model profiles: the shipped ``profiles/*.json`` files, one per known model.

A shipped profile describes a known model (hub id, family, dimensions, vision tokens per image,
default eta, known K records). The user's calibration records and ``--k auto`` are in
``vtwctl.records``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

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
