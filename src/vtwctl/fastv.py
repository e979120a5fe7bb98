"""FastV (Chen et al., 2024) as the comparison row, on the same engine as VTW (``policies.fastv.FastV``).

At layer ``k`` (default 2: layers 0..k-1 see everything) FastV drops the fraction ``ratio`` of the
vision tokens that receive the least attention from the last prompt token at layer ``k - 1``
(averaged over heads); layers >= k see the text tokens and the kept vision tokens. As with VTW,
layers >= k cache only the kept tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .engine.hooks import apply
from .engine.policies.fastv import FastV, last_token_attention  # noqa: F401  (re-exported)
from .errors import ArgumentError


@contextlib.contextmanager
def fastv(model: nn.Module, k: int = 2, ratio: float = 0.5) -> Iterator[nn.Module]:
    """FastV inside the block: after layer ``k - 1``, drop the ``ratio`` least-attended vision tokens."""
    if not 0.0 <= ratio <= 1.0:
        raise ArgumentError(f"FastV ratio must be in [0, 1], got {ratio!r}")
    with apply(model, FastV(k, ratio), lo=1, what="FastV K"):
        yield model
