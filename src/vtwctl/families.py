"""Moved to ``vtwctl.engine.families``; this path stays importable and is that very module (``vtwctl._moved``)."""

from vtwctl._moved import alias

alias(__name__, "vtwctl.engine.families")
