"""Selection policies: which tokens leave the sequence at which layer (Table 2's rows).

The engine (``vtwctl.engine.hooks.Engine``) owns the hooks, the plan, the masks, the rotary tables and the
caches; a policy only says which tokens of a forward call leave before its layer ``k``. A policy is a
small class with one method, ``select(tokens) -> [B, q] bool``, over the public ``Tokens`` view of the
call; the engine never learns which policy it runs. Adding a method is adding one file here and one
line to ``REGISTRY``.

* ``VTW``        every vision token leaves at K (the paper's method).
* ``VTWRandom``  VTW at a random layer per sample ("VTW†": K = Random[K-8, K+8] in Table 2).
* ``Rand``       as many randomly drawn prompt tokens as there are vision tokens leave at K.
* ``FastV``      the vision tokens least attended by the last prompt token at layer K-1 leave at K.
* ``DART``       the vision tokens most duplicated by a few pivot tokens leave at K (docs/methods.md).
* ``PyramidDrop`` in stages (layers 8, 16, 24): at each, the vision tokens still kept that the last
                 instruction token attends to least leave, keeping a fraction λ (docs/methods.md).

Optional parts of the interface: ``observe_layers`` (attention modules whose inputs the policy reads,
through ``observe``: FastV's attention scores) and ``fill`` (what the output of a withdrawn position
is: ``"zeros"``, or ``"last_kept"``, the hidden state of the last kept token before it, as a shortened
sequence would give).

Several stages: ``stages`` (default ``(k,)``) lists increasing layers ``k = k0 < k1 < ...``. At the first
layer of each stage the engine calls ``select`` again, on the tokens still kept (packed: ``Tokens.index``
says which token of the call each one is, ``Tokens.layer`` which stage it is), and the selected ones
leave; the layers of stage j run on its kept tokens and cache exactly those. ``Tokens.attention()`` gives
the inputs the stage layer's attention module would get for those tokens before the selection (its input
norm applied, rotary tables, a mask), from which a policy computes that layer's attention scores with any
attention implementation (PyramidDrop). ``observe`` at a layer inside a later stage receives the packed
tokens. A single-stage policy is the one-stage case: nothing changes for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

REGISTRY = {"vtw": "vtwctl.engine.policies.vtw:VTW", "vtw-random": "vtwctl.engine.policies.vtw_random:VTWRandom",
            "rand": "vtwctl.engine.policies.rand:Rand", "fastv": "vtwctl.engine.policies.fastv:FastV",
            "dart": "vtwctl.engine.policies.dart:DART", "pdrop": "vtwctl.engine.policies.pyramid_drop:PyramidDrop",
            "sparsevlm": "vtwctl.engine.policies.sparsevlm:SparseVLM"}


@dataclass(frozen=True)
class Attention:
    """The inputs a decoder layer's attention module would get for a stage's tokens (``Tokens.attention()``).

    ``module`` is the attention module (its projections, ``head_dim``, ``scaling``: ``vtwctl.attention.project``
    and ``rotate`` apply them as the model does); ``hidden`` [B, q, H] the tokens after the layer's input norm;
    ``cos``/``sin`` [B, q, D] the rotary tables the layer would apply; ``mask`` [B, 1, q, q] bool: query i may
    attend key j (causal by original index, never to padding or fill slots, the layer's sliding window and
    bidirectional blocks). The mask covers this call's tokens only (keys cached by earlier calls are not
    included: policies select in prefills)."""

    module: torch.nn.Module
    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class Tokens:
    """What a policy sees of one forward call at the entry of a stage's layer (B rows, q tokens: at the first
    stage every token of the call, at a later one the packed tokens still kept, with fill slots)."""

    vision: torch.Tensor  # [B, q] bool: vision tokens (of a call that carries pixel inputs; else all False)
    valid: torch.Tensor  # [B, q] bool: real tokens (not padding, not a fill slot)
    hidden: torch.Tensor  # [B, q, H]: the hidden states entering the stage's layer
    past: int  # stock tokens before this call (0: a prefill)
    norm: Callable[[torch.Tensor], torch.Tensor] | None = None  # the language model's final norm (DART)
    layer: int = 0  # the stage's layer (``Policy.stages``)
    index: torch.Tensor | None = None  # [B, q] long: each token's index in the call, -1 for a fill slot
    attention: Callable[[], Attention] | None = None  # the stage layer's attention inputs (None at K = 0)


class Policy:
    """Which tokens leave at layer ``k``; subclasses implement ``select``."""

    name: ClassVar[str] = "policy"
    fill: ClassVar[str] = "zeros"  # a withdrawn position's output: "zeros" or "last_kept"
    observe_layers: tuple[int, ...] = ()  # layers whose attention inputs ``observe`` receives

    def __init__(self, k: int):
        self.k = k

    @property
    def stages(self) -> tuple[int, ...]:
        """The layers before which ``select`` is offered the tokens still kept, increasing; ``(k,)`` by default."""
        return (self.k,)

    def select(self, tokens: Tokens) -> torch.Tensor:
        """[B, q] bool over ``tokens``: those that leave before layer ``tokens.layer`` (``k`` for one stage)."""
        raise NotImplementedError

    def observe(self, layer: int, attn: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, mask: Any) -> None:
        """The inputs of the attention module of ``layer`` (one of ``observe_layers``) in this call:
        ``hidden`` [B, q, H] after the input norm, rotary tables ``cos``/``sin`` [B, q, D], the layer's mask."""

    def active(self, num_layers: int) -> bool:
        """Whether the policy withdraws anything in a model of ``num_layers`` layers (K = N: nothing)."""
        return self.k < num_layers

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"


def get(method: str) -> type[Policy]:
    """The policy class of ``method`` (``spec.METHODS`` but ``stock``), imported on first use."""
    module, _, attr = REGISTRY[method].partition(":")
    return getattr(importlib.import_module(module), attr)
