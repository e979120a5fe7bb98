"""Demo assets of vtwctl: the "shapes" benchmark and a small trained LLaVA ("demo" model).

Importing this package is cheap: no torch/transformers/datasets import happens here.

* ``MODEL_DIR``: directory of the shipped model (``LlavaForConditionalGeneration`` + ``LlavaProcessor``).
* ``shapes``: the benchmark generator module (imported lazily on first attribute access).
* ``load_model()`` / ``load_processor()``: convenience loaders (import transformers when called).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

MODEL_DIR: Path = Path(__file__).resolve().parent / "model"
DEMO_MODEL_NAME = "demo"
DEMO_DATASET_NAME = "shapes"

__all__ = ["MODEL_DIR", "DEMO_MODEL_NAME", "DEMO_DATASET_NAME", "shapes", "load_model", "load_processor"]


def load_processor(model_dir: str | Path | None = None):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(model_dir or MODEL_DIR), local_files_only=True)


def load_model(model_dir: str | Path | None = None, **kwargs: Any):
    from transformers import LlavaForConditionalGeneration

    kwargs.setdefault("dtype", "float32")
    return LlavaForConditionalGeneration.from_pretrained(str(model_dir or MODEL_DIR), local_files_only=True, **kwargs)


def __getattr__(name: str):
    if name == "shapes":
        mod = importlib.import_module(f"{__name__}.shapes")
        globals()["shapes"] = mod
        return mod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
