"""vtwctl: Visual Tokens Withdrawal (VTW) for multimodal LLMs.

Public API (imports are lazy, so ``import vtwctl`` does not load torch):

- ``load(spec, device="auto", dtype="auto", attn_implementation=None)`` -> ``Loaded`` with
  ``.model``, ``.processor``, ``.family``, ``.num_layers``, ``.build_inputs(...)``.
- ``withdraw(model, k, positions="keep")`` -> context manager running VTW at layer ``k``.
- ``generate(loaded, inputs, k=None, ...)`` -> timed generation with or without VTW.
- ``VTWError`` -> raised for bad user input.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "withdraw", "generate", "VTWError", "__version__"]

_LAZY = {
    "load": ("vtwctl.loading", "load"),
    "withdraw": ("vtwctl.withdraw", "withdraw"),
    "generate": ("vtwctl.infer", "generate"),
    "VTWError": ("vtwctl.errors", "VTWError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vtwctl' has no attribute {name!r}")
