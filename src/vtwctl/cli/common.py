"""Options shared by every command that loads a model, checks made before loading, and rendering helpers."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import typer

MODEL = typer.Option("demo", "--model", "-m",
                     help="Short name from profiles/ (llava-1.5-7b, demo, ...), a hub id, or a local directory.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps, or map (spread over all GPUs).")
DTYPE = typer.Option("auto", "--dtype", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16.")
ATTN = typer.Option(None, "--attn-implementation", help="eager, sdpa or flash_attention_2 (default: transformers').")
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text.")
TRUST = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub (off by default).")
# DART's flags of run and profile (older spellings of --set dart.k/ratio/pivots)
DART_K = typer.Option(None, "--dart-k", help="DART layer K (the authors' default 2).")
DART_RATIO = typer.Option(None, "--dart-ratio",
                          help="DART: the fraction of vision tokens DROPPED, pivots aside (default 0.778).")
DART_PIVOTS = typer.Option(None, "--dart-pivots", help="DART: vision,text pivot tokens (default 4,4).")
SET = typer.Option(None, "--set",
                  help="A method's setting, METHOD.NAME=VALUE, repeatable: --set pdrop.layers=8,16,24 --set "
                       "dart.ratio=0.5 (each method's settings: docs/methods.md).")
CALIBRATION_DIR = typer.Option(None, "--calibration-dir", "--profile-dir",
                               help="The calibration store: where calibration records live (default "
                                    "$VTWCTL_CALIBRATION_DIR, else ~/.cache/vtwctl/profiles; --profile-dir and "
                                    "$VTWCTL_PROFILE_DIR: the old names).")


def stderr_console():
    from rich.console import Console

    # a terminal gets its own width; logs and pipes get room for the wide tables
    return Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def stdout_console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def emit_json(obj: Any) -> None:
    """One strict JSON object on stdout (a non-finite number becomes null: JSON has no NaN)."""
    from ..files import dumps

    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def text_option(value: str | None) -> str | None:
    """Text from the command line as the user typed it: under a locale that cannot decode it (``LC_ALL=C``
    with ``PYTHONUTF8=0``) Python keeps the bytes as surrogate escapes, which a tokenizer cannot encode;
    the terminal sent UTF-8, so read them as UTF-8. (Paths are left as they are: they must reach the
    file system byte for byte.)"""
    if value is None or not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    return os.fsencode(value).decode("utf-8", errors="replace")


def model_name(spec: str) -> str:
    """The name records are kept under for ``spec`` (what ``Loaded.name`` will be), without loading."""
    from ..loading import resolve

    res = resolve(spec)
    return res.profile["name"] if res.profile else spec


def check_device(device: str) -> None:
    """The device must exist here (before the model loads)."""
    from ..loading import pick_device

    pick_device(device)


def load_model(model: str, device: str, dtype: str, attn: str | None, trust_remote_code: bool = False,
               prompt_style: str = "hf"):
    """Load through the core with a status spinner on stderr."""
    import transformers

    from ..loading import load

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    console = stderr_console()
    with console.status(f"loading {model}", spinner="dots"):
        return load(model, device=device, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code,
                    prompt_style=prompt_style)


def model_dims(model: str):
    """(``flops.Dims``, the ``loading.resolve`` result) of ``model`` without its weights: from its vtwctl profile,
    else its local config; a ``VTWError`` naming the model when there is neither."""
    from ..errors import VTWError
    from ..flops import dims_for
    from ..loading import resolve

    res = resolve(model)
    try:
        return dims_for(res.profile["name"] if res.profile else res.source), res
    except OSError:
        raise VTWError(f"no dimensions for {model}: not a known short name and no local config") from None


def fastv_settings(preset: str, k: int | None, ratio: float | None) -> tuple[int, float]:
    """FastV's (K, fraction dropped): the ``--fastv-preset``'s, overridden by ``--fastv-k``/``--fastv-ratio``."""
    from ..costs import FASTV_PRESETS
    from ..errors import VTWError

    if preset not in FASTV_PRESETS:
        raise VTWError(f"--fastv-preset must be one of {', '.join(FASTV_PRESETS)}, got {preset!r}")
    k = k if k is not None else FASTV_PRESETS[preset][0]
    ratio = ratio if ratio is not None else FASTV_PRESETS[preset][1]
    if not 0.0 <= ratio <= 1.0:
        raise VTWError(f"--fastv-ratio must be in [0, 1], got {ratio}")
    return k, ratio


def method_settings(given: list[str] | None, **flags: Any) -> dict:
    """``{method: {name: value}}`` from ``--set METHOD.NAME=VALUE`` and the older per-method flags (``flags``:
    ``fastv_k=...``, ``dart_pivots=...``; None: not given). The values are checked by ``RunSpec``; a setting given
    twice, or a ``--set`` that is not ``METHOD.NAME=VALUE``, is an error naming it."""
    from ..errors import VTWError
    from ..spec import LEGACY_SETTINGS

    out: dict[str, dict] = {}
    origin: dict[tuple[str, str], str] = {}
    for item in given or ():
        key, sep, value = str(item).partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not method or not name:
            raise VTWError(f"--set takes METHOD.NAME=VALUE (e.g. dart.ratio=0.5), got {item!r}")
        method = method.strip().lower()
        if (method, name.strip()) in origin:
            raise VTWError(f"{method}.{name.strip()} given twice ({origin[method, name.strip()]} and --set {item})")
        out.setdefault(method, {})[name.strip()] = value.strip()
        origin[method, name.strip()] = f"--set {item}"
    for flag, value in flags.items():
        if value is None:
            continue
        method, name = LEGACY_SETTINGS[flag]
        if (method, name) in origin:
            raise VTWError(f"{method}.{name} given twice ({origin[method, name]} and --{flag.replace('_', '-')})")
        out.setdefault(method, {})[name] = value
        origin[method, name] = f"--{flag.replace('_', '-')}"
    from ..engine.registry import METHODS, canonical

    for method, values in list(out.items()):  # each value checked here, the error naming the flag the user gave
        entry = METHODS[canonical(method)]
        declared = {s.name: s for s in entry.settings()}
        for name, value in values.items():
            if name not in declared:
                known = ", ".join(declared) or "none"
                raise VTWError(f"{origin[method, name]}: {entry.name} has no setting {name!r} (its settings: {known})")
            flag = origin[method, name]
            values[name] = declared[name].parse(value, f"{entry.name}.{name}" if flag.startswith("--set") else flag)
        out[entry.name] = out.pop(method)
    return out


def fastv_preset_into(settings: dict, preset: str) -> dict:
    """FastV's K and ratio from ``--fastv-preset`` where ``settings`` (``method_settings``) has none."""
    k, ratio = fastv_settings(preset, None, None)
    fastv = settings.setdefault("fastv", {})
    fastv.setdefault("k", k)
    fastv.setdefault("ratio", ratio)
    return settings


def method_fields(spec) -> dict:
    """A result's fields of the run's method settings: ``settings``, K as the method's own layer, and the keys
    of results before ``settings`` (``fastv_ratio``, ``dart_ratio``, ``dart_pivots``)."""
    from ..evaluate import settings_record

    options = settings_record(spec)
    if not options:
        return {}
    out: dict[str, Any] = {"settings": options}
    if spec.own_layer() is not None:
        out["k"] = spec.own_layer()
    if spec.method == "fastv":
        out["fastv_ratio"] = spec.fastv_ratio
    if spec.method == "dart":
        out.update(dart_ratio=spec.dart_ratio, dart_pivots=list(spec.dart_pivots))
    return out


def parse_pivots(text: str) -> tuple[int, int]:
    """``--dart-pivots`` "V,T": DART's vision and text pivot counts (checked further by ``RunSpec``)."""
    from ..errors import VTWError

    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise VTWError(f"--dart-pivots must be two integers V,T (vision, text pivots), got {text!r}")
    return int(parts[0]), int(parts[1])


def check_positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    from ..errors import VTWError

    if value is None:
        return
    if not math.isfinite(value) or value < 0 or value == 0 and not allow_zero:
        raise VTWError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def record_summary(rec: dict | None) -> dict | None:
    """The part of a calibration record a JSON result names as the source of ``--k auto``."""
    if rec is None:
        return None
    return {key: rec.get(key) for key in ("dataset", "eta", "k", "samples", "date", "source", "origin")}


def resolve_k(given, num_layers: int, name: str, dataset: str | None, profile_dir, console):
    """``given`` (a ``spec.K``) for a model of ``num_layers`` layers (``K.resolve``: the one rule for
    ``auto``), saying on stderr which record ``auto`` took. None: ``auto`` without a record."""
    from ..spec import describe_record

    found = given.resolve(num_layers, name, dataset, profile_dir=profile_dir)
    if found is not None and found.record is not None:
        console.print(f"--k auto: K={found.record['k']} from the calibration record of {name} "
                      f"({describe_record(found.record)})", soft_wrap=True, highlight=False, markup=False)
    return found


class Progress:
    """Progress on stderr: a Rich bar on a terminal; on a log file or pipe (clusters) a plain line
    every ``every`` items (default: ``$VTWCTL_PROGRESS_EVERY``, else a tenth of the total), at
    least once a minute, and at the end."""

    def __init__(self, label: str, console=None, every: int | None = None, enabled: bool = True,
                 unit: str = "samples"):
        if every is None and os.environ.get("VTWCTL_PROGRESS_EVERY", "").isdigit():
            every = max(1, int(os.environ["VTWCTL_PROGRESS_EVERY"]))
        self.label, self.every, self.enabled, self.unit = label, every, enabled, unit
        self.console = console or stderr_console()
        self.bar = None
        self.jobs: dict[str, Any] = {}
        self.last: dict[str, tuple[int, float]] = {}
        self.start: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> Progress:
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self.console,
                           transient=True)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, total: int | None, stage: str | None = None) -> None:
        if not self.enabled:
            return
        label = f"{self.label} {stage}" if stage else self.label
        now = time.monotonic()
        first = label not in self.start
        if first:
            self.start[label] = (now, done)  # a resumed run starts with finished samples: rate from here
        if self.bar is not None:
            if first:
                self.jobs[label] = self.bar.add_task(label, total=total, rate="")
            job = self.jobs[label]
            t = next((t for t in self.bar.tasks if t.id == job), None)
            rate = f"{t.speed:.2f} {self.unit}/s" if t is not None and t.speed else ""
            self.bar.update(job, completed=done, total=total, rate=rate)
            return
        prev_done, prev_t = self.last.get(label, (None, now))
        step = self.every or max(1, math.ceil((total or 10) / 10))
        due = first or done == total or done - (prev_done or 0) >= step or now - prev_t >= 60
        if not due or done == prev_done:
            return
        self.last[label] = (done, now)
        msg = f"{label}: {done}/{total if total is not None else '?'} {self.unit}"
        if total:
            msg += f" ({100 * done / total:.0f}%)"
        t0, d0 = self.start[label]
        if done > d0 and now > t0:
            rate = (done - d0) / (now - t0)
            msg += f", {rate:.2f} {self.unit}/s"
            if total and done < total:
                msg += f", ~{(total - done) / rate:.0f} s left"
        self.console.print(msg, highlight=False, markup=False, soft_wrap=True)
