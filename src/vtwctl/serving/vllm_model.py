"""Old path of ``vtwctl.integrations.vllm.model``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.integrations.vllm.model")
