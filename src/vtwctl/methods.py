"""Table 2's rows as selection policies over one engine: which tokens leave before layer K.

* ``stock``      nothing leaves (the stock model; ``--no-withdraw``).
* ``vtw``        every vision token leaves at K (the paper's method).
* ``vtw-random`` VTW at a random layer K per sample ("VTW†": K = Random[K-8, K+8] in Table 2),
  drawn from a seed and the sample's id, so a run is reproducible and a resume draws the same K.
* ``rand``       as many *randomly chosen* input tokens as there are vision tokens leave at K
  ("Rand": drawn among every token of the prompt, text included, as the authors' code draws them),
  seeded per sample. Where the last prompt token is drawn, the next token is predicted from the last
  kept one (the authors' code shortens the sequence, so its last hidden state is the last kept
  token's); withdrawn positions get that state, not zeros.
* ``fastv``      FastV's attention-ranked vision tokens (``fastv.py``), at its own K (2 by default).
* ``dart``       DART's least duplicated vision tokens kept (``engine/policies/dart.py``), at its own K (2).

Each but ``stock`` is a small policy class in ``vtwctl.engine.policies`` (one file each); ``context`` runs one
over a stock model, and the engine never learns which policy it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn

from .engine.hooks import apply, num_layers
from .engine.policies.rand import Rand
from .engine.policies.vtw_random import RANDOM_K_SPAN, random_k, sample_seed  # noqa: F401  (re-exported)
from .spec import METHOD_ALIASES as ALIASES  # noqa: F401  (re-exported)
from .spec import METHODS, canonical, runs_stock  # noqa: F401  (re-exported)


@contextlib.contextmanager
def rand_drop(model: nn.Module, k: int, seeds: Sequence[int], positions: str = "keep") -> Iterator[Rand]:
    """Rand inside the block: one seed per batch row; yields the policy (``dropped``: its draws)."""
    policy = Rand(k, seeds)
    with apply(model, policy, positions):
        yield policy


def context(model: nn.Module, method: str, k: int | None = None, positions: str = "keep", fastv_k: int = 2,
            fastv_ratio: float = 0.5, seeds: Sequence[int] | None = None,
            dart: tuple[int, float, tuple[int, int]] = (2, 0.778, (4, 4))):
    """The context manager that makes ``model`` run ``method`` (``vtw-random`` takes its drawn ``k``; ``dart``:
    DART's (layer, ratio, pivots), ``RunSpec.dart``)."""
    method = canonical(method)
    n = num_layers(model)
    if runs_stock(method, k, n):
        return contextlib.nullcontext(model)
    if method in ("vtw", "vtw-random"):
        from .engine.hooks import withdraw

        return withdraw(model, k, positions)
    if method == "fastv":
        from .fastv import fastv

        return fastv(model, fastv_k, fastv_ratio)
    if method == "dart":
        from .engine.policies.dart import DART

        return apply(model, DART(dart[0], dart[1], dart[2]), lo=1, what="DART K")
    if seeds is None:
        raise ValueError("rand needs one seed per batch row")
    return rand_drop(model, n if k is None else k, seeds, positions)
