"""vtwctl: Visual Tokens Withdrawal (VTW) for multimodal LLMs.

Public API (imports are lazy, so ``import vtwctl`` does not load torch):

- ``load(spec, device="auto", dtype="auto", attn_implementation=None)`` -> ``Loaded`` with
  ``.model``, ``.processor``, ``.family``, ``.num_layers``, ``.build_inputs(...)``.
- ``withdraw(model, k, positions="keep")`` -> context manager running VTW at layer ``k``.
- ``generate(loaded, inputs, k=None, ...)`` -> timed generation with or without VTW.
- ``calibrate(loaded, task, etas, ...)`` -> the KL sweep over K (Eq. 6) and the chosen K per eta.
- ``evaluate(loaded, task, k, ...)`` -> a benchmark run (JSONL records, resumable) and its summary.
- ``CompiledDecoder(model, k, compile=True)`` -> greedy VTW decoding, static KV buffers, one compiled
  graph per step: ``.generate(inputs, max_new_tokens)`` -> tokens [B, n] (``k = N``: the stock model).
- ``RunSpec`` / ``K`` -> one run specification (model, K, method and its settings, positions, prompt style,
  image mode, scoring, generation, batch, shard), checked when built; the one K type (layer | auto | stock).
  ``generate``/``evaluate`` take a ``RunSpec`` (keywords change its fields).
- ``VTWError`` -> raised for bad user input (``ArgumentError``, a ``VTWError`` and a ``ValueError``, for bad
  arguments).

Several of these share their name with a module (``vtwctl.withdraw`` the function lives in
``vtwctl.engine.hooks``, which the old path ``vtwctl.withdraw`` also names). Importing a submodule
normally rebinds the package attribute to the module, so ``vtwctl.withdraw`` would turn into a
module as soon as anything imported it. The package refuses that rebinding: ``vtwctl.withdraw`` is
always the function; the module stays reachable as ``sys.modules["vtwctl.withdraw"]`` and through
``from vtwctl.withdraw import ...``.

The engine's modules live in ``engine/`` (hooks, plan, compat, families, policies, support, compiled;
docs/engine.md). Their old paths (``vtwctl.withdraw``, ``vtwctl.plan``, ...) still import, as the very
same module objects (``vtwctl._moved``).
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "withdraw", "generate", "calibrate", "evaluate", "CompiledDecoder", "RunSpec", "K", "VTWError",
           "__version__"]

_LAZY = {
    "load": ("vtwctl.loading", "load"),
    "withdraw": ("vtwctl.engine.hooks", "withdraw"),
    "generate": ("vtwctl.infer", "generate"),
    "calibrate": ("vtwctl.calibrate", "calibrate"),
    "evaluate": ("vtwctl.evaluate", "evaluate"),
    "CompiledDecoder": ("vtwctl.engine.compiled", "CompiledDecoder"),
    "RunSpec": ("vtwctl.spec", "RunSpec"),
    "K": ("vtwctl.spec", "K"),
    "VTWError": ("vtwctl.errors", "VTWError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'vtwctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The ``vtwctl`` module: a public name is never replaced by the submodule of the same name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return  # the import system binding the submodule vtwctl.<name> (or an alias): keep the public name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
