"""Old path of ``vtwctl.testing.checkpoints``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.testing.checkpoints")
