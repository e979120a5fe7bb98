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
* ``fastv``, ``dart``, ... the field's methods, each at its own layers with its own settings
  (``engine/registry.py`` lists them, docs/methods.md describes them).
* ``visionzip``  a reducer: fewer vision tokens enter the language model (``prepare`` shrinks the inputs,
  ``context`` hooks the vision features); ``visionzip+vtw`` composes it with VTW at K.

Each but ``stock`` is a small policy (or reducer) class, one file each; ``context`` runs one over a stock model,
and the engine never learns which policy it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from .engine.hooks import apply, num_layers
from .engine.policies.rand import Rand
from .engine.policies.vtw_random import RANDOM_K_SPAN, random_k, sample_seed  # noqa: F401  (re-exported)
from .engine.registry import parts
from .errors import ArgumentError
from .spec import METHOD_ALIASES as ALIASES  # noqa: F401  (re-exported)
from .spec import METHODS, canonical, runs_stock  # noqa: F401  (re-exported)


@contextlib.contextmanager
def rand_drop(model: nn.Module, k: int, seeds: Sequence[int], positions: str = "keep") -> Iterator[Rand]:
    """Rand inside the block: one seed per batch row; yields the policy (``dropped``: its draws)."""
    policy = Rand(k, seeds)
    with apply(model, policy, positions):
        yield policy


def _legacy(settings, method: str, fastv_k, fastv_ratio, dart) -> dict:
    """The settings of ``method``: ``settings`` (``RunSpec.options``), or the old keyword arguments."""
    if settings is not None:
        return dict(settings)
    if method == "fastv":
        return {"k": fastv_k if fastv_k is not None else 2, "ratio": fastv_ratio if fastv_ratio is not None else 0.5}
    if method == "dart" and dart is not None:
        return {"k": dart[0], "ratio": dart[1], "pivots": tuple(dart[2])}
    return {}


def context(model: nn.Module, method: str, k: int | None = None, positions: str = "keep",
            fastv_k: int | None = None, fastv_ratio: float | None = None, seeds: Sequence[int] | None = None,
            dart: tuple | None = None, settings: Mapping[str, Any] | None = None):
    """The context manager that makes ``model`` run ``method`` (``vtw-random`` takes its drawn ``k``); ``settings``:
    the method's settings (``RunSpec.options(method)``; ``fastv_k``/``fastv_ratio``/``dart`` are their old
    spellings). A reducer (``visionzip``, ``visionzip+vtw``) also needs its inputs through ``prepare``."""
    method = canonical(method)
    reducer, policy = parts(method)
    options = _legacy(settings, method, fastv_k, fastv_ratio, dart)
    if reducer is not None:
        return _reduced(model, reducer, policy, k, positions, seeds, options)
    n = num_layers(model)
    if runs_stock(method, k, n):
        return contextlib.nullcontext(model)
    if method in ("vtw", "vtw-random"):
        from .engine.hooks import withdraw

        return withdraw(model, k, positions)
    if method == "rand":
        if seeds is None:
            raise ValueError("rand needs one seed per batch row")
        return rand_drop(model, n if k is None else k, seeds, positions)
    built = policy.build(options)  # at the positions the authors' code gives the kept tokens (PyramidDrop: renumbered)
    return apply(model, built, getattr(built, "positions", "keep"), lo=1, what=f"{policy.name}.k")


@contextlib.contextmanager
def _reduced(model, reducer, policy, k, positions, seeds, options) -> Iterator[nn.Module]:
    """A reducer's hooks, with the policy it is composed with (``stock``: none) inside them."""
    inner = context(model, policy.name, k, positions, seeds=seeds, settings=policy.own(options))
    with reducer.build(options).apply(model), inner:
        yield model


def prepare(model: nn.Module, method: str, inputs: dict, settings: Mapping[str, Any] | None = None) -> dict:
    """The inputs ``method`` runs on: a reducer's (fewer vision placeholders: ``visionzip``) or ``inputs`` as
    they are; a model the reducer does not fit is an ``ArgumentError`` with the reason."""
    reducer, _ = parts(canonical(method))
    if reducer is None:
        return inputs
    red = reducer.build(settings)
    why = red.refusal(model)
    if why:
        raise ArgumentError(f"{reducer.name}: {why}")
    return red.shrink(model, inputs)
