"""The one error type the CLI turns into a single line on stderr and exit status 2."""

from __future__ import annotations


class VTWError(Exception):
    """A problem with the user's input or environment (bad option, missing file, unknown model)."""


class ArgumentError(VTWError, ValueError):
    """A bad argument to a library function (K out of range, an unknown setting): a ``VTWError`` for the
    command line (one line, exit 2) and a ``ValueError`` for Python callers."""


# why a prompt whose last token is a vision token cannot run with VTW (the engine and the vLLM plugin say it alike)
ENDS_ON_VISION = ("ends with a vision token: after withdrawal no text token is left to predict the next one from; "
                  "put the instruction (or the chat template's prompt) after it")


def check_k(k: int | None, num_layers: int, lo: int = 0, hi: int | None = None, what: str = "K") -> None:
    """K must be an integer in lo..hi (default 0..N, N = no withdrawal); anything else is a VTWError naming the range.

    The one range check for every K-like value: run/profile/attention/generate and withdraw() (0..N),
    FastV (1..N), calibration's k_min (0..N-1). ``None`` (no withdrawal) passes.
    """
    hi = num_layers if hi is None else hi
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, int):
        raise ArgumentError(f"{what} must be an integer layer index in {lo}..{hi} (the model has {num_layers} "
                            f"decoder layers), got {k!r} ({type(k).__name__})")
    if not lo <= k <= hi:
        raise ArgumentError(f"{what}={k!r} is out of range: the model has {num_layers} decoder layers, "
                       f"so {what} must be an integer in {lo}..{hi}")
