"""Old path of ``vtwctl.integrations.vllm.plan``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.integrations.vllm.plan")
