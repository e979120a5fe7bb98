"""The one K type: where vision tokens leave, parsed in one place and resolved in one place.

A ``K`` is a layer number (0-based; layers ``0..K-1`` see the vision tokens), ``auto`` (the layer of
the model's calibration record) or stock (no withdrawal). ``K.parse`` reads what a user gives
(``--k``, lmms-eval's ``k=``, vLLM's ``vtw_k``), ``K.resolve`` turns it into a layer for a model of N
layers: a layer ``N`` *is* the stock model, so a resolved K is ``None`` (stock) or ``0..N-1``.

``auto`` follows one rule, ``records.auto_k`` (run, profile, attention, lmms-eval and serve alike):

1. the user's newest record for the dataset (for no dataset: for any dataset), at ``eta`` when given;
2. else the shipped profile's record for the dataset, the profile's default eta first;
3. else a record calibrated for every task (``"*"``): the user's newest, then the shipped one
   (for no dataset: the shipped "*", then any shipped record).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import ArgumentError, VTWError, check_k

_STOCK_WORDS = ("none", "stock")


@dataclass(frozen=True)
class K:
    """A withdrawal layer as given: ``K(16)``, ``K.AUTO`` or ``K.STOCK`` (see the module docstring)."""

    layer: int | None = None
    auto: bool = False

    def __post_init__(self) -> None:
        if self.auto and self.layer is not None:
            raise ArgumentError("K is either a layer or 'auto', not both")
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)
                                       or self.layer < 0):
            raise ArgumentError(f"K={self.layer!r} is out of range: K must be an integer >= 0 "
                                "(0-based layer; N = no withdrawal)")

    @property
    def stock(self) -> bool:
        """Given as stock (``none``/``--no-withdraw``); a layer of N is only known to be stock once resolved."""
        return self.layer is None and not self.auto

    @classmethod
    def parse(cls, value: Any, what: str = "--k", stock_words: bool = False) -> K:
        """A ``K`` from what a user gave: an int (or its text, or an integral float), ``"auto"``, or with
        ``stock_words`` ``"none"``/``"stock"``. ``None`` is stock. A bad value is an ``ArgumentError``
        naming ``what``."""
        if value is None or isinstance(value, K):
            return value if isinstance(value, K) else STOCK
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return AUTO
            if stock_words and text in _STOCK_WORDS:
                return STOCK
            if text.lstrip("-").isdigit():
                return cls._layer(int(text), what)
        elif isinstance(value, int) and not isinstance(value, bool):
            return cls._layer(value, what)
        elif isinstance(value, float) and value.is_integer():
            return cls._layer(int(value), what)
        words = ", 'auto' or 'none'" if stock_words else " or 'auto'"
        raise ArgumentError(f"{what} must be an integer{words}, got {value!r}")

    @classmethod
    def _layer(cls, k: int, what: str) -> K:
        if k < 0:
            name = "K" if what == "--k" else what
            raise ArgumentError(f"{name}={k} is out of range: K must be an integer >= 0 "
                                "(0-based layer; N = no withdrawal)")
        return cls(layer=k)

    @classmethod
    def parse_list(cls, text: str, what: str = "--k") -> tuple[K, ...]:
        """``--k`` of ``vtwctl profile``: ``auto``, or one integer or a comma-separated list of them."""
        parts = [p.strip() for p in str(text).split(",")]
        if str(text).strip().lower() == "auto":
            return (AUTO,)
        try:
            ks = tuple(cls._layer(int(p), what) for p in parts if p)
        except ValueError as exc:
            if isinstance(exc, ArgumentError):
                raise
            ks = ()
        if not ks or len(ks) != len(parts):
            raise ArgumentError(f"{what} must be an integer, a comma-separated list of integers or 'auto', "
                                f"got {text!r}")
        return ks

    def record(self, model: str, dataset: str | None = None, eta: float | None = None,
               profile_dir: str | os.PathLike | None = None) -> dict | None:
        """The calibration record ``auto`` stands for (None for a layer, stock, or when there is none)."""
        if not self.auto:
            return None
        from .records import auto_k

        return auto_k(model, dataset, profile_dir, eta=eta)

    def resolve(self, num_layers: int | None, model: str | None = None, dataset: str | None = None,
                eta: float | None = None, profile_dir: str | os.PathLike | None = None,
                what: str = "K") -> Resolved | None:
        """The layer for a model of ``num_layers`` layers (None: not known yet, no range check).

        ``auto`` looks up ``model``'s record (``records.auto_k``; None when there is none). The layer is
        checked to be in 0..N (an ``ArgumentError`` otherwise, naming the record it came from); a layer
        of N resolves to the stock model (``Resolved.k is None``)."""
        rec = None
        if self.auto:
            if model is None:
                raise ArgumentError("K 'auto' needs the model name of its calibration record")
            rec = self.record(model, dataset, eta, profile_dir)
            if rec is None:
                return None
            layer = int(rec["k"])
            if num_layers is not None and not 0 <= layer <= num_layers:
                raise VTWError(f"the calibration record for {model} ({describe_record(rec)}) has K={layer}, out of "
                               f"range for the model's {num_layers} layers; recalibrate or pass K")
        else:
            layer = self.layer
            if layer is not None and num_layers is not None:
                check_k(layer, num_layers, what=what)
        stock = layer is None or (num_layers is not None and layer >= num_layers)
        return Resolved(None if stock else layer, rec)

    def __str__(self) -> str:
        return "auto" if self.auto else "stock" if self.layer is None else str(self.layer)


STOCK = K()
AUTO = K(auto=True)


@dataclass(frozen=True)
class Resolved:
    """A resolved K: ``k`` is the layer (None: the stock model), ``record`` the calibration record of
    ``auto`` (None otherwise)."""

    k: int | None
    record: dict | None = None

    def layer(self, num_layers: int) -> int:
        """K as a layer number, N for the stock model."""
        return num_layers if self.k is None else self.k


def describe_record(rec: dict) -> str:
    """A calibration record in a few words: dataset, eta, samples, date; where it is kept."""
    bits = [f"dataset {rec.get('dataset')}"]
    if rec.get("eta") is not None:
        bits.append(f"η={rec['eta']:g}")
    if rec.get("samples"):
        bits.append(f"{rec['samples']} samples")
    if rec.get("date"):
        bits.append(str(rec["date"])[:10])
    src = rec.get("origin") or rec.get("source") or ""
    return f"{', '.join(bits)}; {src}".rstrip("; ")
