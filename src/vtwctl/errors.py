"""The one error type the CLI turns into a single line on stderr and exit status 2."""

from __future__ import annotations


class VTWError(Exception):
    """A problem with the user's input or environment (bad option, missing file, unknown model)."""


def check_k(k: int | None, num_layers: int) -> None:
    """K must be in 0..N (N = no withdrawal); anything else is a VTWError naming the range."""
    if k is not None and not 0 <= k <= num_layers:
        raise VTWError(f"K={k} is out of range: the model has {num_layers} decoder layers, "
                       f"so K must be in 0..{num_layers}")
