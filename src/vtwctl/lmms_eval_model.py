"""Old path of ``vtwctl.integrations.lmms_eval.model``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.integrations.lmms_eval.model")
