"""The one error type the CLI turns into a single line on stderr and exit status 2."""

from __future__ import annotations


class VTWError(Exception):
    """A problem with the user's input or environment (bad option, missing file, unknown model)."""
