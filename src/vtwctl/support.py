"""Old path of ``vtwctl.engine.support``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.engine.support")
