"""One run specification (``RunSpec``) and the one K type (``K``), each parsed and checked in one place.

``RunSpec`` holds every setting of a run: the model and how to load it, K, the method and its settings,
positions, prompt style, image mode, scoring, generation settings, batch and shard. The command line, the
lmms-eval model and the library build it once (the checks run then, as ``ArgumentError``s) and pass it
down; library functions take it instead of long argument lists.


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

import math
import os
from dataclasses import dataclass, field, fields, replace
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


def _with_legacy_settings(init):
    """``RunSpec(fastv_k=3, dart_pivots=(2, 2), ...)``: the settings' old field names, moved into ``settings``."""

    def __init__(self, *args, **kw):
        legacy = {name: kw.pop(name) for name in list(kw) if name in LEGACY_SETTINGS}
        if legacy:
            merged = {m: dict(v) for m, v in (kw.get("settings") or {}).items()}
            for name, value in legacy.items():
                method, key = LEGACY_SETTINGS[name]
                merged.setdefault(method, {})[key] = value
            kw["settings"] = merged
        init(self, *args, **kw)

    __init__.__doc__ = init.__doc__
    return __init__


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


# -- methods: Table 2's rows and the field (engine/registry.py) -----------------------------------------------
METHOD_ALIASES = {"baseline": "stock", "vtw_random": "vtw-random", "vtw†": "vtw-random", "random": "rand"}
POSITIONS = ("keep", "rearrange")
PROMPT_STYLES = ("hf", "paper")
IMAGE_MODES = ("normal", "blank", "none")
SCORING_MODES = ("lmms-eval", "lenient")
# the old names of settings now under ``RunSpec.settings`` (``RunSpec.of`` still takes them)
LEGACY_SETTINGS = {"fastv_k": ("fastv", "k"), "fastv_ratio": ("fastv", "ratio"), "dart_k": ("dart", "k"),
                   "dart_ratio": ("dart", "ratio"), "dart_pivots": ("dart", "pivots")}


def __getattr__(name: str):
    from .engine import registry

    if name == "METHODS":  # every method name (compositions aside), in the registry's order
        return registry.names()
    if name == "NEEDS_K":  # the methods that withdraw at the run's K
        return tuple(m.name for m in registry.METHODS.values() if m.uses_k)
    if name == "OWN_K":  # the methods with their own layers (their settings), not K
        return tuple(m.name for m in registry.METHODS.values() if m.target and not m.uses_k and not m.reducer)
    raise AttributeError(name)


def canonical(method: str) -> str:
    """A method's name (``engine.registry``), aliases (``baseline``, ``vtw_random``, ``random``) resolved and a
    composition (``visionzip+vtw``) checked."""
    from .engine.registry import canonical as name

    return name(method)


def runs_stock(method: str, k: int | None, num_layers: int) -> bool:
    """Whether ``method`` at layer ``k`` (None: none) leaves the model stock: the one place where "K = N is
    the stock model" is decided (VTW and VTW† at K >= N withdraw nothing; ``stock`` never does)."""
    if method == "stock":
        return True
    from .engine.registry import parts

    reducer, policy = parts(method)
    return reducer is None and policy.name in ("vtw", "vtw-random") and (k is None or k >= num_layers)


@dataclass(frozen=True)
class Generation:
    """How answers are generated: greedy unless ``do_sample``; ``stop`` strings end an answer (lmms-eval's
    ``until``); ``max_new_tokens`` None: the caller's default (32 for a prompt, a task's own length)."""

    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and (isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1):
            raise ArgumentError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.do_sample and (not math.isfinite(self.temperature) or self.temperature <= 0):
            raise ArgumentError(f"--temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "stop", tuple(self.stop or ()))


GENERATION_FIELDS = tuple(f.name for f in fields(Generation))


@dataclass(frozen=True)
class RunSpec:
    """Every setting of a run, checked when built (``ArgumentError``: a ``VTWError`` and a ``ValueError``).

    ``k``: a ``K`` (or what ``K.parse`` reads; None: stock); ``method``: a name of ``engine.registry`` (aliases
    and compositions such as ``visionzip+vtw`` accepted); ``settings``: each method's settings by name,
    ``{"fastv": {"k": 3, "ratio": 0.5}, "dart": {...}}``, checked against what the method declares (docs/methods.md;
    ``options(method)`` gives them with the defaults filled in; settings of several methods may be given at
    once, as ``vtwctl profile`` rows need); ``seed``: the
    draws of Rand and VTW† (per sample, with its id) and of sampling; ``shard``: (I, N), run every N-th
    sample from I; ``compiled``: greedy decoding on the compiled fast path (VTW or stock, ``keep``)."""

    model: str = "demo"
    k: Any = STOCK
    method: str = "vtw"
    settings: Any = field(default_factory=dict)
    seed: int | None = None
    positions: str = "keep"
    prompt_style: str = "hf"
    image_mode: str = "normal"
    scoring: str = "lmms-eval"
    generation: Generation = field(default_factory=Generation)
    batch_size: int = 1
    shard: tuple[int, int] = (0, 1)
    compiled: bool = False
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        from .engine.registry import METHODS as REGISTRY
        from .engine.registry import uses_k

        method = canonical(self.method)
        k = K.parse(self.k)
        if not uses_k(method):
            k = STOCK  # the stock model, and the methods with their own layers (fastv.k, dart.k, pdrop.layers)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "k", k)
        given = self.settings or {}
        if not isinstance(given, dict):
            given = dict(given)
        settings = {}
        for name, values in given.items():
            entry = REGISTRY.get(METHOD_ALIASES.get(str(name).lower(), str(name).lower()))
            if entry is None or not entry.target:
                raise ArgumentError(f"settings for an unknown method {name!r}")
            if not isinstance(values, dict):
                raise ArgumentError(f"settings of {entry.name} must be a mapping of names to values, got {values!r}")
            full = entry.resolve(values)  # checked
            settings[entry.name] = {n: full[n] for n in values}
        object.__setattr__(self, "settings", settings)
        self._check()

    def _check(self) -> None:
        def one_of(flag: str, value, allowed) -> None:
            if value not in allowed:
                raise ArgumentError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")

        if self.positions not in POSITIONS:
            raise ArgumentError(f"--positions must be keep or rearrange, got {self.positions!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ArgumentError(f"--prompt-style must be hf or paper, got {self.prompt_style!r}")
        one_of("--image-mode", self.image_mode, IMAGE_MODES)
        one_of("--scoring", self.scoring, SCORING_MODES)
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ArgumentError("--batch-size must be at least 1")
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ArgumentError(f"--shard {index}/{count}: need 0 <= I < N")
        if self.compiled and (self.method not in ("vtw", "stock") or self.generation.do_sample
                              or self.positions != "keep"):
            raise ArgumentError("--compile decodes greedily with VTW or the stock model at the original positions: "
                                "drop --sample, --method other than vtw/stock and --positions rearrange")

    def __hash__(self) -> int:  # ``settings`` is a dict: hashed as its sorted items
        frozen = tuple(sorted((m, tuple(sorted(v.items()))) for m, v in self.settings.items()))
        return hash(tuple(frozen if f.name == "settings" else getattr(self, f.name) for f in fields(self)))

    def options(self, method: str | None = None) -> dict:
        """Every setting of ``method`` (default: this run's; of a composition, its reducer's and its policy's
        together), the defaults filled in."""
        from .engine.registry import members

        out: dict = {}
        for entry in members(method or self.method):
            out.update(entry.resolve(self.settings.get(entry.name)))
        return out

    def with_options(self, method: str, **values: Any) -> RunSpec:
        """This spec with ``method``'s settings ``values`` changed (``spec.with_options("fastv", ratio=0.75)``)."""
        name = canonical(method)
        return replace(self, settings={**self.settings, name: {**self.settings.get(name, {}), **values}})

    def own_layer(self, method: str | None = None) -> int | None:
        """The layer a method with its own layers shows as K in reports (FastV's and DART's k, PyramidDrop's
        first layer); None for the methods that use the run's K and for the stock model."""
        from .engine.registry import parts

        reducer, policy = parts(method or self.method)
        if policy.uses_k or not policy.target:
            return None
        return policy.layer(self.settings.get(policy.name))

    # the settings' old names (RunSpec fields before ``settings``), read-only
    fastv_k = property(lambda self: self.options("fastv")["k"])
    fastv_ratio = property(lambda self: self.options("fastv")["ratio"])
    dart_k = property(lambda self: self.options("dart")["k"])
    dart_ratio = property(lambda self: self.options("dart")["ratio"])
    dart_pivots = property(lambda self: self.options("dart")["pivots"])

    @property
    def dart(self) -> tuple[int, float, tuple[int, int]]:
        """DART's settings: (layer, ratio, (vision pivots, text pivots))."""
        o = self.options("dart")
        return o["k"], o["ratio"], o["pivots"]

    @classmethod
    def of(cls, spec: Any = None, **settings: Any) -> RunSpec:
        """``spec`` (default: a fresh ``RunSpec``; anything else is shorthand for its K) with ``settings``
        changed; ``Generation``'s fields (``max_new_tokens``, ``do_sample``, ...) may be given here too."""
        if spec is not None and not isinstance(spec, RunSpec):
            if "k" in settings:
                raise ArgumentError("K given twice (as the spec and as k=)")
            spec, settings = None, {**settings, "k": spec}
        spec = spec if spec is not None else cls()
        gen = {name: settings.pop(name) for name in GENERATION_FIELDS if name in settings}

        if "stop" in gen:
            gen["stop"] = tuple(gen["stop"] or ())
        if gen:
            settings["generation"] = replace(spec.generation, **gen)
        unknown = sorted(set(settings) - {f.name for f in fields(cls)} - set(LEGACY_SETTINGS))
        if unknown:
            raise ArgumentError(f"unknown run setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
        return replace(spec, **settings) if settings else spec

    def layer(self, num_layers: int, model: str | None = None, dataset: str | None = None,
              calibration_dir: str | os.PathLike | None = None) -> int | None:
        """K as a layer of a model of ``num_layers`` layers (None: the stock model); ``auto`` through the
        one rule (``K.resolve``), an ``ArgumentError`` when there is no record."""
        found = self.k.resolve(num_layers, model, dataset, profile_dir=calibration_dir)
        if found is None:
            raise ArgumentError(f"K 'auto': no calibration record for {model}"
                                + (f" on {dataset}" if dataset else "") + "; run vtwctl calibrate or give K")
        return found.k

    @property
    def max_new_tokens(self) -> int | None:
        return self.generation.max_new_tokens


RunSpec.__init__ = _with_legacy_settings(RunSpec.__init__)
