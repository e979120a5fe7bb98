"""Serving with VTW: a vLLM out-of-tree plugin (``pip install "vtwctl[vllm]"``; docs/serving.md).

vLLM loads ``register`` in each of its processes through the ``vllm.general_plugins`` entry point.
It registers vtwctl's subclass of vLLM's LLaVA-1.5 class (the family verified so far) under the
stock architecture name, lazily (as ``module:Class`` strings: nothing of vLLM's model code is
imported until vLLM builds a model). A model whose config has no ``vtw_k`` runs exactly as vLLM's
own class; ``--hf-overrides '{"vtw_k": 16}'`` turns VTW on (see ``config``). Importing vtwctl, or
this package, never imports vLLM. ``VTWCTL_VLLM_PLUGIN=0`` (or vLLM's ``VLLM_PLUGINS`` without
``vtwctl``) leaves vLLM's registry alone.
"""

from __future__ import annotations

import os

# stock vLLM architecture name -> vtwctl class in vtwctl.serving.vllm_model
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "VTWLlavaForConditionalGeneration",
}
MODULE = "vtwctl.serving.vllm_model"


def register() -> list[str]:
    """Register the VTW classes with vLLM's model registry (idempotent). Returns the names registered now."""
    if os.environ.get("VTWCTL_VLLM_PLUGIN", "1") == "0":
        return []
    from vllm import ModelRegistry

    done = []
    for arch, cls in ARCHITECTURES.items():
        target = f"{MODULE}:{cls}"
        current = ModelRegistry.models.get(arch)
        if current is not None and (getattr(current, "module_name", None), getattr(current, "class_name", None)) == (
                MODULE, cls):
            continue
        ModelRegistry.register_model(arch, target)
        done.append(arch)
    return done
