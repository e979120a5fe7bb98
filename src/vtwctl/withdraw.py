"""Old path of ``vtwctl.engine.hooks``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.engine.hooks")
