"""Old path of ``vtwctl.engine.compat``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.engine.compat")
