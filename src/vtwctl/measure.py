"""Latency and memory as a protocol: warm-up, repeats, median and spread, prefill and decode apart.

Prefill (time to first token) is timed as ``generate(max_new_tokens=1)``; end-to-end as
``generate(max_new_tokens=T, min_new_tokens=T)``. Decode is timed directly, step by step: a stopping
criterion stamps the end of every generated token (a CUDA event on GPU, no synchronisation), and a
repeat's decode time per token is the median of its T-1 step durations, so it is never a difference
of medians and never non-positive. Repeats continue (up to ``max_repeats``) until the relative spread
(p90 - p10) / median of prefill and decode is at most ``target_spread``; ``stable`` says whether it got
there.
On CUDA every timed region is bracketed by CUDA events after a synchronisation; on CPU it is wall
time with the thread count recorded in the environment. Memory: on CUDA the peak allocated during
one end-to-end run minus what was allocated before it (the model and inputs: Table 4's "per sample
GM") and the device-level used memory from NVML; on CPU the same peak of tensor memory, read from the
torch profiler's allocation events (``CPUPeak``; an RSS difference can be negative).
KV-cache bytes are read from the cache object after prefill and at the end of decoding.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Stat:
    median: float
    p10: float
    p90: float
    min: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, xs: list[float]) -> Stat:
        ys = sorted(xs)

        def q(p: float) -> float:
            return ys[min(len(ys) - 1, max(0, round(p * (len(ys) - 1))))]

        return cls(median=statistics.median(ys), p10=q(0.1), p90=q(0.9), min=ys[0], samples=list(xs))


@dataclass
class Measurement:
    method: str
    k: int | None
    new_tokens: int
    prefill: Stat
    total: Stat
    decode_s_per_token: float
    decode: Stat  # per repeat: the median duration of its decode steps
    stable: bool  # the spread of prefill and decode reached target_spread
    kv_cache_bytes_prefill: int
    kv_cache_bytes_end: int
    peak_memory_bytes: int | None
    device_memory_used_bytes: int | None
    warmup: int
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def context(model, method: str, k: int | None = None, positions: str = "keep", seeds: list[int] | None = None,
            settings: dict | None = None):
    """The context manager that makes ``model`` run ``method`` (``methods.context``; "baseline" = stock)."""
    from .methods import context as method_context

    return method_context(model, method, k, positions, seeds=seeds, settings=settings)


def cache_of(output):
    """The cache object of a model or generate output (``cache``; ``past_key_values`` in older versions)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def cache_bytes(cache) -> int:
    """Bytes held by the keys and values of a transformers cache."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total


class _Timer:
    def __init__(self, device):
        import torch

        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.torch = torch

    def __call__(self, fn) -> float:
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def _step_clock(cuda: bool):
    """A stopping criterion that stamps the end of every generation step and never stops generation."""
    import torch
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):
        def __init__(self):
            self.marks: list = []

        def __call__(self, input_ids, scores, **kwargs):
            if cuda:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                self.marks.append(ev)
            else:
                self.marks.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        def steps(self) -> list[float]:
            """Durations of the decode steps (between consecutive token stamps), in seconds."""
            if cuda:
                torch.cuda.synchronize()
                return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    return StepClock()


def spread(stat: Stat) -> float:
    """(p90 - p10) / median, the relative spread of a measured duration (inf for a zero median)."""
    return (stat.p90 - stat.p10) / stat.median if stat.median > 0 else float("inf")


@contextlib.contextmanager
def _quiet_stderr_fd():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines) for a moment."""
    import os
    import sys

    sys.stderr.flush()
    try:
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class CPUPeak:
    """Peak CPU tensor memory allocated inside the block above what was allocated when it began
    (the CPU counterpart of ``torch.cuda.max_memory_allocated() - memory_allocated()``; never negative).

    The torch profiler records every CPU allocation and free with its size, in order; the peak is the
    largest running sum. Memory outside torch tensors (the Python heap, libraries) is not counted,
    and neither is allocator caching, which is what makes an RSS difference wrong (often negative).
    ``bytes`` is None when the profiler cannot run here.
    """

    def __init__(self):
        self.bytes: int | None = None
        self._prof = None

    def __enter__(self) -> CPUPeak:
        try:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with _quiet_stderr_fd():
                self._prof.__enter__()
        except Exception:  # no profiler support in this build
            self._prof = None
        return self

    def __exit__(self, *exc) -> None:
        if self._prof is None:
            return
        with _quiet_stderr_fd():
            self._prof.__exit__(*exc)
        if exc[0] is None:
            self.bytes = _peak_of(self._prof)


def _peak_of(prof) -> int | None:
    try:  # the raw, time-ordered allocation events
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and "CPU" in str(e.device_type())]
    except AttributeError:  # older layout: the public function events (allocations folded into their ops)
        events = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage]
    running = peak = 0
    for _, nbytes in sorted(events, key=lambda x: x[0]):
        running += nbytes
        peak = max(peak, running)
    return int(peak)


_NVML: dict = {}  # "ok": whether nvmlInit succeeded (initialised once per process)


def _nvml():
    """pynvml, initialised once per process; None without a driver or the library."""
    if "ok" not in _NVML:
        try:
            import pynvml

            pynvml.nvmlInit()
            _NVML["ok"], _NVML["module"] = True, pynvml
        except Exception:  # no driver, no GPU, no library
            _NVML["ok"] = False
    return _NVML.get("module") if _NVML["ok"] else None


def visible_device(index: int, visible: str | None) -> int | str:
    """The NVML device behind torch's CUDA device ``index``: ``CUDA_VISIBLE_DEVICES`` (``visible``) renumbers
    devices, so torch's index N is its N-th entry, a physical index or a ``GPU-``/``MIG-`` UUID."""
    if not visible or not visible.strip():
        return index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise IndexError(f"CUDA device {index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    entry = entries[index]
    return int(entry) if entry.isdigit() else entry


def nvml_used_bytes(device) -> int | None:
    """Device-level used memory from NVML (pynvml, from nvidia-ml-py) of the GPU torch calls ``device``,
    or None. NVML numbers GPUs physically (PCI order, all of them); torch numbers the visible ones in its
    own order, so the device is found by its UUID (torch's device properties), else through
    ``CUDA_VISIBLE_DEVICES``."""
    import os

    nvml = _nvml()
    if nvml is None:
        return None
    index = getattr(device, "index", None) or 0
    try:
        handle = None
        try:
            import torch

            uuid = str(torch.cuda.get_device_properties(index).uuid)
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        except Exception:  # an older torch without the UUID, or NVML does not know it
            handle = None
        if handle is None:
            which = visible_device(index, os.environ.get("CUDA_VISIBLE_DEVICES"))
            handle = nvml.nvmlDeviceGetHandleByUUID(which) if isinstance(which, str) \
                else nvml.nvmlDeviceGetHandleByIndex(which)
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # the device cannot be read
        return None


@dataclass(frozen=True)
class Protocol:
    """How a measurement is repeated: ``max_new_tokens`` per end-to-end run (at least 2), ``warmup`` rounds,
    ``repeats`` rounds, then more (up to ``max_repeats``, default 3x ``repeats``) while a spread is above
    ``target_spread``."""

    max_new_tokens: int = 16
    warmup: int = 1
    repeats: int = 5
    max_repeats: int | None = None
    target_spread: float = 0.1


def measure_many(loaded, inputs: dict, plans: list[tuple], spec=None, protocol: Protocol | None = None,
                 progress=None, **settings: Any) -> list[Measurement]:
    """Measure several (method, k) plans side by side: repeats are interleaved round-robin, so load
    changes on the machine hit every plan alike; memory and KV bytes are read once per plan. A plan
    (method, k, settings) carries its own method settings (``{method: {name: value}}``, as ``RunSpec.settings``).

    ``spec`` (a ``RunSpec``): FastV's settings, positions, and the seed of Rand's draw; ``settings`` change
    its fields or ``protocol``'s (``max_new_tokens=``, ``repeats=``, ...)."""
    from dataclasses import fields, replace

    from .spec import RunSpec

    names = {f.name for f in fields(Protocol)}
    protocol = replace(protocol or Protocol(), **{k: settings.pop(k) for k in list(settings) if k in names})
    spec = RunSpec.of(spec, **settings)
    positions, seed = spec.positions, spec.seed or 0
    max_new_tokens, warmup, repeats = protocol.max_new_tokens, protocol.warmup, protocol.repeats
    max_repeats, target_spread = protocol.max_repeats, protocol.target_spread
    import torch

    model = loaded.model
    timer = _Timer(loaded.device)
    gen_kw: dict[str, Any] = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    t = max(2, max_new_tokens)

    seeds = [seed] * int(inputs["input_ids"].shape[0])  # Rand's draw: the same every repeat

    def options(plan) -> dict:  # a plan's own settings (a third element), else the spec's for its method
        own = spec if len(plan) < 3 else RunSpec.of(spec, settings={**spec.settings, **plan[2]})
        return own.options(plan[0])

    def ctx(plan):
        return context(model, plan[0], plan[1], positions, seeds=seeds, settings=options(plan))

    from .methods import prepare

    fed = [prepare(model, plan[0], inputs, options(plan)) for plan in plans]  # a reducer's: shorter

    def prefill(x):
        model.generate(**x, max_new_tokens=1, **gen_kw)

    clock = [None]

    def full(x):
        from transformers import StoppingCriteriaList

        clock[0] = _step_clock(timer.cuda)
        model.generate(**x, max_new_tokens=t, min_new_tokens=t, stopping_criteria=StoppingCriteriaList([clock[0]]),
                       **gen_kw)

    limit = max(repeats, max_repeats if max_repeats is not None else 3 * repeats)
    pre: list[list[float]] = [[] for _ in plans]
    tot: list[list[float]] = [[] for _ in plans]
    dec: list[list[float]] = [[] for _ in plans]
    steps, done = len(plans) * (repeats + 1), 0

    def settled() -> bool:
        return all(spread(Stat.of(p)) <= target_spread and spread(Stat.of(d)) <= target_spread
                   for p, d in zip(pre, dec))
    with torch.inference_mode():
        for plan, x in zip(plans, fed):
            with ctx(plan):
                for _ in range(warmup):
                    prefill(x)
                    full(x)
        rounds = 0
        while rounds < repeats or (rounds < limit and not settled()):
            if rounds >= repeats:
                steps += len(plans)
            for i, plan in enumerate(plans):
                with ctx(plan):
                    pre[i].append(timer(functools.partial(prefill, fed[i])))
                    tot[i].append(timer(functools.partial(full, fed[i])))
                    durations = clock[0].steps()
                    dec[i].append(statistics.median(durations) if durations else float("nan"))
                done += 1
                if progress:
                    progress(done, steps)
            rounds += 1
        stable = settled()
        out = []
        for i, plan in enumerate(plans):
            with ctx(plan):
                kv_prefill, peak, kv_end, used = _memory(loaded, model, fed[i], t, gen_kw)
            done += 1
            if progress:
                progress(done, steps)
            method, k = plan[:2]
            pre_s, tot_s, dec_s = Stat.of(pre[i]), Stat.of(tot[i]), Stat.of(dec[i])
            own = RunSpec.of(spec, settings={**spec.settings, **plan[2]}).own_layer(method) if len(plan) > 2 \
                else spec.own_layer(method)
            out.append(Measurement(
                method=method, k=own if own is not None else k, new_tokens=t,
                prefill=pre_s, total=tot_s,
                decode_s_per_token=dec_s.median, decode=dec_s, stable=stable,
                kv_cache_bytes_prefill=kv_prefill, kv_cache_bytes_end=kv_end, peak_memory_bytes=peak,
                device_memory_used_bytes=used, warmup=warmup, repeats=rounds))
    return out


def _memory(loaded, model, inputs, t, gen_kw):
    """KV bytes after prefill; peak memory growth, KV bytes and device memory of one end-to-end run."""
    import torch

    kv_prefill = cache_bytes(cache_of(model(**inputs, use_cache=True)))
    cuda = getattr(loaded.device, "type", "") == "cuda"
    kw = dict(max_new_tokens=t, min_new_tokens=t, return_dict_in_generate=True, **gen_kw)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(loaded.device)
        before = torch.cuda.memory_allocated(loaded.device)
        out = model.generate(**inputs, **kw)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(loaded.device) - before
        used = nvml_used_bytes(loaded.device)
    else:
        with CPUPeak() as meter:
            out = model.generate(**inputs, **kw)
        peak, used = meter.bytes, None
    return kv_prefill, peak, cache_bytes(cache_of(out)), used
