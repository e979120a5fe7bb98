"""Serving with VTW: a vLLM out-of-tree plugin (``pip install "vtwctl[vllm]"``; docs/serving.md).

vLLM loads ``register`` in each of its processes through the ``vllm.general_plugins`` entry point.
It registers vtwctl's subclasses of vLLM's classes for the verified families (``ARCHITECTURES``)
under the stock architecture names, lazily (as ``module:Class`` strings: nothing of vLLM's model code
is imported until vLLM builds a model). A model whose config has no ``vtw_k`` runs exactly as vLLM's
own class; ``--hf-overrides '{"vtw_k": 16}'`` turns VTW on (see ``config``). The vision-language
architectures in ``UNVERIFIED`` get a guard subclass instead, which refuses to start when the config
asks for VTW and is vLLM's class otherwise.
Importing vtwctl, or this package, never imports vLLM. ``VTWCTL_VLLM_PLUGIN=0`` (or vLLM's
``VLLM_PLUGINS`` without ``vtwctl``) leaves vLLM's registry alone.
"""

from __future__ import annotations

import os

# stock vLLM architecture name -> vtwctl class in MODULE
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "VTWLlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "VTWLlavaNextForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": "VTWLlavaOnevisionForConditionalGeneration",
    "Qwen2VLForConditionalGeneration": "VTWQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "VTWQwen2_5_VLForConditionalGeneration",
    "Mistral3ForConditionalGeneration": "VTWMistral3ForConditionalGeneration",
    "Idefics3ForConditionalGeneration": "VTWIdefics3ForConditionalGeneration",
    "LlavaNextVideoForConditionalGeneration": "VTWLlavaNextVideoForConditionalGeneration",
    "SmolVLMForConditionalGeneration": "VTWSmolVLMForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "VTWQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration": "VTWQwen3VLMoeForConditionalGeneration",
    "InternVLForConditionalGeneration": "VTWInternVLForConditionalGeneration",  # HF format; vLLM's InternS1 class
}
MODULE = "vtwctl.integrations.vllm.model"
# vision-language architectures vLLM serves on which VTW is not verified: with vtw_k they refuse to start
# (without vtw_k they are vLLM's classes); vtwctl serve refuses them before anything loads
UNVERIFIED = (
    "Gemma3ForConditionalGeneration", "InternVLChatModel",
)
GUARD_PREFIX = "VTWUnverified_"
# why VTW cannot be verified on an architecture of UNVERIFIED that was tried (the guard and vtwctl serve say it)
WHY_UNVERIFIED = {
    "Gemma3ForConditionalGeneration": (
        "Gemma 3's image tokens attend to each other bidirectionally (vLLM's mm-prefix ranges), which vLLM 0.32's "
        "CPU attention backend ignores: stock vLLM there already gives other tokens than the model for prompts "
        "with an image (it equals the model with causal image attention), so VTW has no reference to equal"),
}


def targets() -> dict[str, str]:
    """Architecture -> vtwctl class name in ``MODULE``, for every architecture the plugin registers."""
    return {**ARCHITECTURES, **{arch: GUARD_PREFIX + arch for arch in UNVERIFIED}}


def register() -> list[str]:
    """Register the VTW classes with vLLM's model registry (idempotent). Returns the names registered now."""
    if os.environ.get("VTWCTL_VLLM_PLUGIN", "1") == "0":
        return []
    from vllm import ModelRegistry

    done = []
    for arch, cls in targets().items():
        target = f"{MODULE}:{cls}"
        current = ModelRegistry.models.get(arch)
        if current is None and arch in UNVERIFIED:
            continue  # not in this vLLM
        if current is not None and (getattr(current, "module_name", None), getattr(current, "class_name", None)) == (
                MODULE, cls):
            continue
        ModelRegistry.register_model(arch, target)
        done.append(arch)
    from .kv import register_kv  # the text-only KV cache's spec and manager, for vLLM's KV-cache manager

    register_kv()
    return done
