"""Parquet fixtures in the hub datasets' real schemas (a handful of rows, small PIL images)."""

from __future__ import annotations

from pathlib import Path

import pytest


def image(color=(200, 30, 30), size=(12, 10)):
    from PIL import Image

    return Image.new("RGB", size, color)


def write_parquet(path: Path, rows: list[dict], features: dict) -> Path:
    """``rows`` as a parquet file with ``datasets`` features (images decode back to PIL)."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    ds.to_parquet(str(path))
    return path


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    """No hub, an empty HF cache: loading with source=None must fail with one clear line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config as dconf

    monkeypatch.setattr(dconf, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(dconf, "HF_DATASETS_CACHE", tmp_path / "hf-datasets", raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    return tmp_path


def records(task, samples, outputs, scoring="lmms-eval"):
    """The records ``metrics`` receives, for model outputs ``outputs`` (one per sample)."""
    out = []
    for s, o in zip(samples, outputs):
        r = task.process(s, o, scoring)
        out.append({"id": s.id, "parsed": r["parsed"], "answer": s.answer, "correct": r["correct"], "meta": s.meta})
    return out
