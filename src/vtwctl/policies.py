"""Old path of ``vtwctl.engine.policies``: the same module object (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.engine.policies", ("vtw", "vtw_random", "rand", "fastv"))
