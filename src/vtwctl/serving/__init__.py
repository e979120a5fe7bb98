"""Old path of ``vtwctl.integrations.vllm`` (the vLLM plugin; docs/serving.md): its names, re-exported.

Each submodule's old path (``vtwctl.serving.kv``, ``.vllm_model``, ``.config``, ``.plan``, ``.probe``,
``.kv_names``; ``.fixtures``, now ``vtwctl.testing.checkpoints``) is the moved module itself (a
``sys.modules`` alias, ``vtwctl._moved``), so a class named by either path is one class. Importing
this package never imports vLLM.
"""

from __future__ import annotations

from ..integrations.vllm import (
    ARCHITECTURES,
    GUARD_PREFIX,
    MODULE,
    UNVERIFIED,
    WHY_UNVERIFIED,
    register,
    targets,
)

__all__ = ["ARCHITECTURES", "GUARD_PREFIX", "MODULE", "UNVERIFIED", "WHY_UNVERIFIED", "register", "targets"]
