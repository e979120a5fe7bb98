"""The shipped profiles read straight from ``profiles/*.json`` (not through vtwctl), for test expectations."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def profile(name: str = "demo") -> dict:
    return json.loads((ROOT / "profiles" / f"{name}.json").read_text())


def demo_k(dataset: str = "shapes") -> int:
    """K of the demo model's newest shipped calibration record for ``dataset``."""
    return next(r["k"] for r in reversed(profile("demo")["calibrations"]) if r["dataset"] == dataset)
