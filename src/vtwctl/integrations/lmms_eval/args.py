"""lmms-eval's model arguments and requests in vtwctl's terms (no lmms-eval import needed).

``parse_model_args`` checks ``--model_args``; ``resolve_k`` picks K per lmms-eval task (``k=auto``:
the model's calibration record for the matching vtwctl dataset); ``generation_settings`` maps a
request's ``generation_kwargs``; ``split_visuals``/``content_for`` turn ``doc_to_visual`` output and
the context into ``Loaded.build_inputs`` arguments; ``plan_batches`` groups requests into batches.
Used by ``vtwctl.integrations.lmms_eval.model``.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ...errors import VTWError, check_k
from ...spec import AUTO, STOCK, Generation, K, RunSpec

EXCLUDED = ("vtw-random", "rand")  # they draw per sample from run ids; lmms-eval's requests carry none
OWN_K = {"fastv": "FastV", "dart": "DART"}  # the methods with their own layer ``k`` (default 2): their names
LEGACY = {"pivots_image": ("dart", "pivots", 0), "pivots_text": ("dart", "pivots", 1)}  # DART's pivots, one each


def methods() -> tuple[str, ...]:
    """The ``method=`` values: every method of ``engine.registry`` but VTW† and Rand, and ``baseline``."""
    from ...engine.registry import names

    return tuple(m for m in names() if m not in EXCLUDED and m != "stock") + ("baseline",)


def __getattr__(name: str):
    if name == "METHODS":
        return methods()
    raise AttributeError(name)
ALIASES = {"max_frames_num": "frames", "attn": "attn_implementation", "model": "pretrained"}
IGNORED_ARGS = ("max_batch_size",)  # passed by lmms-eval's evaluator; vtwctl batches exactly batch_size rows

# lmms-eval task name (or its prefix before "_") -> the vtwctl dataset whose calibration record k=auto uses
TASK_DATASETS = (("scienceqa", "sqa"), ("ai2d", "ai2d"), ("mmmu", "mmmu"), ("mmbench", "mmbench"),
                 ("pope", "pope"), ("mme", "mme"), ("videomme", "videomme"), ("video_mme", "videomme"),
                 ("vtwctl_shapes", "shapes"), ("shapes", "shapes"))

GEN_KEYS = ("max_new_tokens", "temperature", "do_sample", "top_p", "top_k", "num_beams", "until",
            "stop_sequences", "seed", "repetition_penalty")
GEN_IGNORED = ("image_aspect_ratio", "visual_cot", "skip_special_tokens", "use_cache", "image_sizes")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


# -- model arguments ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    pretrained: str = "demo"
    k: K = STOCK  # a layer, auto or stock (k=none, method=baseline); FastV, DART: its layer (default 2)
    method: str = "vtw"
    positions: str = "keep"
    settings: dict | None = None  # the method's settings given by name (ratio=0.5, layers=8;16;24), checked
    eta: float | None = None
    calibration: str | None = None
    profile_dir: str | None = None
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    frames: int = 8
    max_new_tokens: int = 1024
    use_until: bool = True
    spec: RunSpec | None = None  # the run specification these arguments make (built once, checked then)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise VTWError(f"model_args {name} must be true or false, got {value!r}")


def _as_int(name: str, value: Any, low: int) -> int:
    try:
        out = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        out = None
    if out is None or out < low or (isinstance(value, float) and value != out):
        raise VTWError(f"model_args {name} must be an integer >= {low}, got {value!r}")
    return out


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise VTWError(f"model_args {name} must be a number, got {value!r}") from None


def setting_names() -> set[str]:
    """Every setting name some method declares (model_args keys)."""
    from ...engine.registry import METHODS as REGISTRY

    return {s.name for m in REGISTRY.values() for s in m.settings()}


def _method_settings(method: str, given: dict[str, Any]) -> dict:
    """The method's settings among ``given`` (popped): its declared names (``ratio=0.5``; a list as ``8;16;24``,
    since lmms-eval splits model_args on commas), FastV's/DART's ``k``, DART's ``pivots_image``/``pivots_text``;
    checked by the method's declarations. ``{method: {name: value}}``; a setting of another method is refused."""
    from ...engine.registry import members

    out: dict[str, dict] = {}
    for entry in members(method):
        declared = {s.name for s in entry.settings()}
        own: dict[str, Any] = {}
        if "k" in declared and given.get("k") is not None:
            own["k"] = _as_int("k", given.pop("k"), 1)
        for name in sorted((declared - {"k"}) & set(given)):
            value = given.pop(name)
            own[name] = value.replace(";", ",").replace("|", ",") if isinstance(value, str) else value
        legacy = {name: _as_int(name, given.pop(name), 0) for name in list(given)
                  if name in LEGACY and LEGACY[name][0] == entry.name}
        try:
            if legacy:
                pivots = list(entry.resolve({n: v for n, v in own.items() if n != "pivots"})["pivots"])
                for name, value in legacy.items():
                    pivots[LEGACY[name][2]] = value
                own["pivots"] = tuple(pivots)
            entry.resolve(own)
        except ValueError as exc:
            raise VTWError(f"model_args {exc}") from None
        if own:
            out[entry.name] = own
    stray = sorted(set(given) & ((setting_names() - {"k"}) | set(LEGACY)))
    if stray:
        raise VTWError(f"model_args {', '.join(stray)}: not a setting of method={method} (docs/methods.md)")
    return out


def parse_model_args(args: dict[str, Any]) -> Options:
    """lmms-eval's parsed ``--model_args`` (plus its batch_size/device) -> checked ``Options``."""
    names = {f.name for f in fields(Options)} - {"settings"}
    names |= setting_names() | set(LEGACY)
    given: dict[str, Any] = {}
    for key, value in args.items():
        key = ALIASES.get(key, key)
        if key in IGNORED_ARGS or value is None:
            continue
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise VTWError(f"unknown vtw model argument {key!r}{hint}; known: {', '.join(sorted(names))}")
        given[key] = value
    opts = Options()
    from ...engine.registry import canonical, uses_k

    method = str(given.get("method", "vtw")).lower()
    try:
        method = "baseline" if method == "baseline" else canonical(method)
    except ValueError:
        method = None
    if method is None or method == "stock" or method in EXCLUDED:
        raise VTWError(f"model_args method must be one of {', '.join(methods())} (or a composition such as "
                       f"visionzip+vtw), got {given['method']!r}")
    withdraws_at_k = method != "baseline" and uses_k(method)
    k = given.get("k")
    settings = _method_settings(method, given) if method != "baseline" else {}
    if withdraws_at_k:
        if k is None:
            raise VTWError("say which K: k=INT (withdrawal layer), k=auto (from the calibration record), "
                           "k=none or method=baseline (stock model)")
        k = K.parse(k, what="model_args k", stock_words=True)
    elif method in OWN_K:
        k = K(settings.get(method, {}).get("k", 2))
    elif given.get("k") is not None:
        raise VTWError(f"method={method} has no K of the run; drop k (its settings: docs/methods.md)")
    else:
        k = STOCK
    positions = str(given.get("positions", "keep")).lower()
    if positions not in ("keep", "rearrange"):
        raise VTWError(f"model_args positions must be keep or rearrange, got {given['positions']!r}")
    if positions == "rearrange" and method != "vtw":
        raise VTWError("positions=rearrange applies to method=vtw only")
    eta = _as_float("eta", given["eta"]) if "eta" in given else None
    if eta is not None and eta <= 0:
        raise VTWError(f"model_args eta must be positive, got {eta}")
    batch = str(given.get("batch_size", 1)).strip()
    if batch.startswith("auto"):
        raise VTWError("batch_size=auto is not supported by the vtw model; give an integer")
    opts = replace(
        opts, pretrained=str(given.get("pretrained", opts.pretrained)), k=k, method=method, positions=positions,
        settings=settings, eta=eta, calibration=given.get("calibration"),
        profile_dir=given.get("profile_dir"),
        batch_size=_as_int("batch_size", batch, 1), device=str(given.get("device", "auto")),
        dtype=str(given.get("dtype", "auto")), attn_implementation=given.get("attn_implementation"),
        trust_remote_code=_as_bool("trust_remote_code", given.get("trust_remote_code", False)),
        frames=_as_int("frames", given.get("frames", opts.frames), 1),
        max_new_tokens=_as_int("max_new_tokens", given.get("max_new_tokens", opts.max_new_tokens), 1),
        use_until=_as_bool("use_until", given.get("use_until", True)),
    )
    return replace(opts, spec=run_spec(opts))


def run_spec(opts: Options) -> RunSpec:
    """The run specification of checked model arguments (K ``auto`` is resolved per task: ``resolve_k``)."""
    return RunSpec(model=opts.pretrained, k=opts.k, method="stock" if opts.method == "baseline" else opts.method,
                   settings=opts.settings or {}, positions=opts.positions,
                   generation=Generation(max_new_tokens=opts.max_new_tokens),
                   batch_size=opts.batch_size, device=opts.device, dtype=opts.dtype,
                   attn_implementation=opts.attn_implementation, trust_remote_code=opts.trust_remote_code)


# -- K per task ------------------------------------------------------------------------------------
def dataset_for_task(task: str) -> str | None:
    """The vtwctl dataset matching an lmms-eval task name (``mme``, ``scienceqa_img`` -> sqa), or None."""
    name = (task or "").strip().lower()
    for prefix, dataset in TASK_DATASETS:
        if name == prefix or name.startswith(prefix + "_"):
            return dataset
    return None


def resolve_k(opts: Options, model_name: str, num_layers: int, task: str) -> tuple[int | None, str]:
    """(K for ``task``, or None for the stock model; where it came from). FastV: its own layer.

    ``k=auto`` takes the record of the vtwctl dataset matching ``task`` (or ``calibration=``; a task
    with no vtwctl dataset: the model-wide ``"*"`` record) by the one rule (``vtwctl.spec.K``)."""
    from ...engine.registry import uses_k

    if opts.method == "baseline" or (uses_k(opts.method) and opts.k == STOCK):
        return None, "stock model"

    if not uses_k(opts.method):  # the methods with their own layers: their settings
        spec = opts.spec if opts.spec is not None else run_spec(opts)
        policy_name = opts.method.split("+")[-1]
        if opts.method in OWN_K:
            check_k(opts.k.layer, num_layers, lo=1, what=f"{OWN_K[opts.method]} k")
        options = spec.options()
        if opts.method == "dart":
            p = options["pivots"]
            return opts.k.layer, f"DART at layer {opts.k.layer}, ratio {options['ratio']}, pivots {p[0]}+{p[1]}"
        if opts.method in OWN_K:
            return opts.k.layer, f"{OWN_K[opts.method]} at layer {opts.k.layer}, ratio {options['ratio']}"
        shown = ", ".join(f"{n} {v}" for n, v in options.items())
        return spec.own_layer(), f"{policy_name} ({shown})"
    if opts.k != AUTO:
        return opts.k.resolve(num_layers).k, "k from model_args"
    dataset = opts.calibration or dataset_for_task(task) or "*"
    found = opts.k.resolve(num_layers, model_name, dataset, opts.eta, opts.profile_dir)
    if found is None:
        what = f"vtwctl dataset {dataset}" if dataset != "*" else "no matching vtwctl dataset"
        raise VTWError(f"k=auto: no calibration record of {model_name} for lmms-eval task {task!r} ({what}); "
                       f"run `vtwctl calibrate --model {model_name} --dataset DATASET`, pass calibration=DATASET "
                       "or give k=INT")
    rec = found.record
    src = (f"calibration record of {model_name} on {rec.get('dataset')} (eta={rec.get('eta')}, "
           f"{rec.get('source', 'vtwctl calibrate')})")
    return found.k, src


# -- generation settings ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    until: tuple[str, ...] = ()


def _stops(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise VTWError(f"gen_kwargs {name} must be a string or a list of strings, got {value!r}")
    return list(value)


def generation_settings(gen_kwargs: dict | None, default_max_new_tokens: int = 1024,
                        use_until: bool = True) -> GenSettings:
    """An lmms-eval request's ``generation_kwargs`` -> what ``vtwctl.infer.generate`` runs.

    As lmms-eval's own models do, a given ``temperature`` decides: > 0 samples, 0 is greedy
    (``do_sample`` only counts when no temperature is given). ``until``/``stop_sequences`` cut the
    answer at the first stop string. Beam search and repetition penalties are refused (not silently
    dropped); the keys in ``GEN_IGNORED`` are other models' preprocessing switches and are ignored.
    """
    kw = dict(gen_kwargs or {})
    unknown = sorted(set(kw) - set(GEN_KEYS) - set(GEN_IGNORED))
    if unknown:
        raise VTWError(f"gen_kwargs {', '.join(unknown)} not supported by the vtw model; "
                       f"supported: {', '.join(GEN_KEYS)}")
    if int(kw.get("num_beams", 1) or 1) != 1:
        raise VTWError(f"gen_kwargs num_beams={kw['num_beams']}: beam search is not supported by the vtw model")
    if float(kw.get("repetition_penalty", 1.0) or 1.0) != 1.0:
        raise VTWError("gen_kwargs repetition_penalty is not supported by the vtw model")
    max_new = kw.get("max_new_tokens")
    max_new = default_max_new_tokens if max_new is None else _as_int("max_new_tokens", max_new, 1)
    if kw.get("temperature") is not None:
        temperature = float(kw["temperature"])
        do_sample = temperature > 0
    else:
        do_sample = _as_bool("do_sample", kw.get("do_sample", False))
        temperature = 1.0
    top_p = float(kw["top_p"]) if do_sample and kw.get("top_p") is not None else None
    top_k = int(kw["top_k"]) if do_sample and kw.get("top_k") is not None else None
    seed = int(kw["seed"]) if kw.get("seed") is not None else None
    until = _stops("until", kw.get("until")) + _stops("stop_sequences", kw.get("stop_sequences"))
    return GenSettings(max_new_tokens=max_new, do_sample=do_sample, temperature=temperature if do_sample else 1.0,
                       top_p=top_p, top_k=top_k, seed=seed, until=tuple(until) if use_until else ())


def apply_until(text: str, until: tuple[str, ...] | list[str]) -> str:
    """``text`` up to the first occurrence of each stop string (lmms-eval's ``split(term)[0]``)."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


# -- requests -> model inputs ----------------------------------------------------------------------
def split_visuals(visuals: Any, frames: int = 8) -> tuple[list, Any]:
    """``doc_to_visual`` output -> (images in order, one video or None).

    Images: PIL images, image files, [H, W, 3] arrays, ``{"bytes"|"path": ...}`` dicts. Videos:
    video files, frame folders, ``.npy`` files, [T, H, W, 3] arrays (``frames`` evenly spaced frames).
    """
    import numpy as np
    from PIL import Image

    from ...media import read_image, read_video

    if visuals is None:
        return [], None
    visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    images, videos = [], []
    for v in visuals:
        if v is None:
            continue
        if isinstance(v, dict) and ("array" in v or "sampling_rate" in v):
            raise VTWError("audio inputs are not supported by the vtw model")
        if isinstance(v, dict) and v.get("bytes") is not None:
            import io

            v = Image.open(io.BytesIO(v["bytes"]))
        elif isinstance(v, dict) and v.get("path"):
            v = v["path"]
        if isinstance(v, Image.Image):
            images.append(v.convert("RGB") if v.mode != "RGB" else v)
        elif isinstance(v, (str, os.PathLike)):
            path = Path(v)
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                images.append(read_image(path))
            else:
                videos.append(read_video(path, frames))
        elif isinstance(v, np.ndarray) and v.ndim == 3:
            images.append(Image.fromarray(v.astype("uint8")).convert("RGB"))
        elif isinstance(v, np.ndarray) and v.ndim == 4:
            idx = np.linspace(0, len(v) - 1, num=min(frames, len(v))).round().astype(int)
            videos.append(v[idx].astype("uint8"))
        else:
            raise VTWError(f"unsupported visual input of type {type(v).__name__} from doc_to_visual")
    if len(videos) > 1:
        raise VTWError(f"{len(videos)} videos in one request: the vtw model takes at most one video per request")
    return images, (videos[0] if videos else None)


def content_for(context: str, n_images: int, n_videos: int = 0) -> str | list[dict]:
    """The prompt for ``Loaded.build_inputs``: the context itself (visuals go first), or, when it
    holds exactly one ``<image>`` marker per image, content parts with the images in its places."""
    marks = context.count("<image>")
    if n_images and marks == n_images and not n_videos:
        parts: list[dict] = []
        for i, piece in enumerate(context.split("<image>")):
            if i:
                parts.append({"type": "image"})
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        if not any(p["type"] == "text" for p in parts):
            parts.append({"type": "text", "text": ""})
        return parts
    if marks or "<video>" in context:
        return context.replace("<image>", "").replace("<video>", "").strip()
    return context


def plan_batches(keys: list[tuple], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most ``batch_size``: requests with equal keys (task, split,
    generation settings) share batches, groups in order of first appearance, requests in order."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(i)
    return [idx[s:s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]
