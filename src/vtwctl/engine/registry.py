"""The methods a run can name, and the settings each one declares (one place for their names, defaults, checks).

A method is the stock model, a *policy* (which tokens leave at which layers of the language model:
``vtwctl.engine.policies``), a *reducer* (fewer vision tokens enter the language model:
``vtwctl.engine.reducers``), or a reducer composed with a policy (``visionzip+vtw``). Each policy or reducer
file declares its own settings as ``SETTINGS`` (a tuple of ``Setting``) and, for exact FLOPs, either
``vision_by_layer(num_layers, vision, text, **settings)`` (a policy: the vision tokens each decoder layer
processes in prefill) or ``vision_tokens(vision, **settings)`` (a reducer: the vision tokens the language model
receives). Adding a method is one file and one line in ``METHODS``.

Settings travel as ``{method: {name: value}}`` (``RunSpec.settings``), are given on the command line as
``--set METHOD.NAME=VALUE`` (``--set pdrop.layers=8,16,24``) and in lmms-eval's ``model_args`` by name; a setting's
``grid`` is what ``vtwctl frontier`` sweeps by default.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentError

KINDS = ("int", "float", "ints", "pair")


@dataclass(frozen=True)
class Setting:
    """One setting of a method: ``kind`` int, float, ints (an increasing tuple of ints: layers) or pair (two
    ints); ``lo``/``hi`` bound every number; ``grid`` the values ``vtwctl frontier`` sweeps by default."""

    name: str
    default: Any
    help: str
    kind: str = "float"
    lo: float | None = None
    hi: float | None = None
    grid: tuple = ()

    def parse(self, value: Any, what: str) -> Any:
        """``value`` (a number, a tuple, or their text: "0.5", "8,16,24") checked; an ``ArgumentError`` naming
        ``what`` otherwise."""
        if self.kind in ("ints", "pair"):
            items = value.split(",") if isinstance(value, str) else value
            try:
                items = [_number(v, "int") for v in (items if isinstance(items, (list, tuple)) else [items])]
            except (TypeError, ValueError):
                raise ArgumentError(f"{what} must be a comma list of integers, got {value!r}") from None
            if self.kind == "pair" and len(items) != 2:
                raise ArgumentError(f"{what} must be two integers A,B, got {value!r}")
            if self.kind == "ints" and (not items or any(b <= a for a, b in zip(items, items[1:]))):
                raise ArgumentError(f"{what} must be increasing integers, got {value!r}")
            for v in items:
                self._bound(v, what)
            return tuple(items)
        try:
            number = _number(value, self.kind)
        except (TypeError, ValueError):
            raise ArgumentError(f"{what} must be {'an integer' if self.kind == 'int' else 'a number'}, "
                                f"got {value!r}") from None
        self._bound(number, what)
        return number

    def _bound(self, v: float, what: str) -> None:
        if not math.isfinite(v) and self.lo is None and self.hi is None:
            raise ArgumentError(f"{what} must be a finite number, got {v!r}")
        if not math.isfinite(v) or (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            rng = f"in [{self.lo:g}, {self.hi:g}]" if self.lo is not None and self.hi is not None else \
                f">= {self.lo:g}" if self.lo is not None else f"<= {self.hi:g}"
            raise ArgumentError(f"{what} must be {rng}, got {v!r}")

    def text(self, value: Any) -> str:
        """``value`` as a user writes it ("8,16,24", "0.5")."""
        return ",".join(str(v) for v in value) if isinstance(value, tuple) else f"{value:g}" \
            if isinstance(value, float) else str(value)


def _number(value: Any, kind: str) -> float | int:
    if isinstance(value, bool):
        raise TypeError(value)
    if kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(value)
            return int(value)
        return int(str(value).strip()) if isinstance(value, str) else int(value) if isinstance(value, int) else \
            _fail(value)
    return float(value.strip()) if isinstance(value, str) else float(value)  # non-finite: refused by the bounds


def _fail(value: Any):
    raise TypeError(value)


@dataclass(frozen=True)
class Method:
    """A method's entry: ``target`` the "module:Class" of its policy or reducer (None: the stock model);
    ``uses_k``: it withdraws at the run's K (VTW, VTW†, Rand); ``reducer``: it acts before the language model."""

    name: str
    target: str | None = None
    uses_k: bool = False
    reducer: bool = False
    summary: str = ""

    def module(self):
        return importlib.import_module(self.target.partition(":")[0]) if self.target else None

    def cls(self):
        return getattr(self.module(), self.target.partition(":")[2]) if self.target else None

    def settings(self) -> tuple[Setting, ...]:
        return tuple(getattr(self.module(), "SETTINGS", ())) if self.target else ()

    def defaults(self) -> dict:
        return {s.name: s.default for s in self.settings()}

    def resolve(self, given: Mapping[str, Any] | None = None) -> dict:
        """Every setting of the method: the defaults, ``given`` over them, each checked (unknown names refused),
        then the method's own ``validate(settings)`` where it has one (DART: not both pivot counts 0)."""
        declared = {s.name: s for s in self.settings()}
        out = self.defaults()
        for name, value in (given or {}).items():
            if name not in declared:
                known = ", ".join(declared) or "none"
                raise ArgumentError(f"{self.name} has no setting {name!r} (its settings: {known})")
            out[name] = declared[name].parse(value, f"{self.name}.{name}")
        check = getattr(self.module(), "validate", None) if self.target else None
        if check is not None:
            check(out)
        return out

    def own(self, options: Mapping[str, Any] | None) -> dict:
        """The entries of ``options`` that are this method's settings (a composition's options hold its
        reducer's and its policy's together: ``RunSpec.options``)."""
        declared = {s.name for s in self.settings()}
        return {name: v for name, v in (options or {}).items() if name in declared}

    def build(self, options: Mapping[str, Any] | None = None):
        """The method's policy or reducer object with ``options`` (its own entries, checked; defaults for the
        rest)."""
        return self.cls()(**self.resolve(self.own(options)))

    def vision_by_layer(self, num_layers: int, vision: int, text: int, settings: Mapping[str, Any]) -> list[int]:
        """The vision tokens each decoder layer processes in a prefill of ``vision`` + ``text`` tokens."""
        fn = getattr(self.module(), "vision_by_layer", None)
        if fn is None:
            raise ValueError(f"{self.name}: no vision_by_layer (its FLOPs depend on K: use the run's K)")
        return [int(v) for v in fn(num_layers, vision, text, **self.resolve(settings))]

    def vision_tokens(self, vision: int, settings: Mapping[str, Any]) -> int:
        """A reducer: the vision tokens the language model receives for ``vision`` stock ones."""
        return int(self.module().vision_tokens(vision, **self.resolve(settings)))

    def layer(self, settings: Mapping[str, Any]) -> int | None:
        """The method's first withdrawal layer (its policy's ``k``: FastV's and DART's k, PyramidDrop's first
        stage, SparseVLM's first scoring layer + 1), shown in reports as K; None for a reducer."""
        if not self.target or self.reducer:
            return None
        return int(self.build(settings).k)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("stock", summary="the stock model: nothing leaves"),
    Method("vtw", "vtwctl.engine.policies.vtw:VTW", uses_k=True, summary="every vision token leaves at K"),
    Method("vtw-random", "vtwctl.engine.policies.vtw_random:VTWRandom", uses_k=True,
           summary="VTW at a K drawn per sample in K-8..K+8 (Table 2's VTW†)"),
    Method("rand", "vtwctl.engine.policies.rand:Rand", uses_k=True,
           summary="as many random prompt tokens as there are vision tokens leave at K"),
    Method("fastv", "vtwctl.engine.policies.fastv:FastV",
           summary="the vision tokens least attended by the last prompt token at layer k-1 leave at k"),
    Method("dart", "vtwctl.engine.policies.dart:DART",
           summary="the vision tokens most duplicated by a few pivot tokens leave at k"),
    Method("pdrop", "vtwctl.engine.policies.pyramid_drop:PyramidDrop",
           summary="in stages (layers 8/16/24), the vision tokens least attended by the last instruction token "
                   "leave, λ of them kept per stage"),
    Method("sparsevlm", "vtwctl.engine.policies.sparsevlm:SparseVLM",
           summary="after layers 2/6/15, the vision tokens least attended by text raters leave (v1.5 counts; "
                   "no recycling)"),
    Method("visionzip", "vtwctl.engine.reducers.visionzip:VisionZip", reducer=True,
           summary="before the language model: dominant tokens by the tower's attention + merged contextual ones"),
)}
ALIASES = {"baseline": "stock", "vtw_random": "vtw-random", "vtw†": "vtw-random", "random": "rand"}


def parts(name: str) -> tuple[Method | None, Method]:
    """A method name (aliases resolved, ``reducer+policy`` composed) as its (reducer, policy) entries: ``visionzip``
    is (VisionZip, stock), ``visionzip+vtw`` (VisionZip, VTW), ``fastv`` (None, FastV). An ``ArgumentError`` for an
    unknown name or a composition that is not a reducer followed by a policy."""
    pieces = [p.strip().lower() for p in str(name).split("+")]
    entries = []
    for p in pieces:
        p = ALIASES.get(p, p)
        if p not in METHODS:
            raise ArgumentError(f"unknown method {name!r}; use one of {', '.join(names())}")
        entries.append(METHODS[p])
    if len(entries) == 1:
        return (entries[0], METHODS["stock"]) if entries[0].reducer else (None, entries[0])
    if len(entries) != 2 or not entries[0].reducer or entries[1].reducer or entries[1].name == "stock":
        raise ArgumentError(f"method {name!r}: a composition is a reducer then a policy (e.g. visionzip+vtw)")
    return entries[0], entries[1]


def canonical(name: str) -> str:
    """The method's name as reports and records write it (``baseline`` -> ``stock``, ``VisionZip+VTW`` ->
    ``visionzip+vtw``)."""
    reducer, policy = parts(name)
    if reducer is None:
        return policy.name
    return reducer.name if policy.name == "stock" else f"{reducer.name}+{policy.name}"


def names() -> tuple[str, ...]:
    """Every method name, compositions aside."""
    return tuple(METHODS)


def uses_k(name: str) -> bool:
    """Whether ``name`` withdraws at the run's K (VTW, VTW†, Rand, or a reducer composed with one)."""
    return parts(name)[1].uses_k


def members(name: str) -> tuple[Method, ...]:
    """The entries of ``name`` that carry settings (the reducer and the policy of a composition)."""
    reducer, policy = parts(name)
    return tuple(m for m in (reducer, policy) if m is not None and m.target)
