"""Moved to ``vtwctl.engine.policies``; this path stays importable and is that very module (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.engine.policies", ("vtw", "vtw_random", "rand", "fastv"))
