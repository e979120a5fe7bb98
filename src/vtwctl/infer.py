"""Inference with or without VTW, timed: prefill (time to first token), decode, total."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import VTWError
from .spec import RunSpec, runs_stock


def sync(device: Any) -> None:
    """Wait for queued GPU work so a timer reads real time."""
    import torch

    dev = getattr(device, "type", str(device))
    if dev == "cuda":
        torch.cuda.synchronize()
    elif dev == "mps":
        torch.mps.synchronize()


class _Clock:
    """A generate() streamer that timestamps the first generated token (after a device sync)."""

    def __init__(self, device: Any):
        self.device = device
        self.calls = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt, call 2 the first new token
            sync(self.device)
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


@dataclass
class Generation:
    answers: list[str]
    tokens: list[list[int]]
    new_tokens: list[int]
    num_vision_tokens: list[int]
    num_text_tokens: list[int]
    prefill_s: float
    decode_s: float
    total_s: float
    k: int | None
    kv_bytes: int | None = None  # bytes of keys and values in the cache at the end (all rows)
    method: str = "vtw"

    def to_dict(self) -> dict:
        return asdict(self)


def generate(loaded, inputs: dict, spec: RunSpec | None = None, *, seeds: list[int] | None = None,
             **settings: Any) -> Generation:
    """Generate for a batch of inputs as ``spec`` says (a ``RunSpec``; ``settings`` change its fields, as in
    ``generate(m, inputs, k=6, max_new_tokens=8)``). K stock (None) or N is the stock model.

    ``method`` (``engine.registry``): ``vtw`` (and ``vtw-random`` at its drawn K) withdraws the vision tokens
    at K; ``rand`` drops as many random prompt tokens at K, drawn from ``seeds`` (one per row; default: the
    spec's seed for every row); the field's methods (``fastv``, ``dart``, ...) run with their settings
    (``spec.options()``); a reducer (``visionzip``, ``visionzip+vtw``) runs on its shrunken inputs; ``stock`` is
    the stock model. Generation settings (``spec.generation``): greedy unless
    ``do_sample`` (``top_p``/``top_k`` only then; None: the model's generation config), ``stop`` strings end
    an answer (lmms-eval's ``until``), ``max_new_tokens`` (default 32). ``seed`` seeds sampling without
    touching the caller's random generator.

    ``compiled``: greedy decoding through ``vtwctl.engine.compiled`` (static caches, one compiled graph per step;
    the first call per model, K and shape compiles); VTW or the stock model, positions "keep". Stop strings
    cut the answer afterwards (decoding runs to an end-of-sequence token or ``max_new_tokens``).
    """
    import torch

    spec = RunSpec.of(spec, **settings)
    gen_settings = spec.generation
    max_new_tokens = gen_settings.max_new_tokens or 32
    model = loaded.model
    n = loaded.num_layers
    k = spec.layer(n, loaded.name)
    from .methods import context, prepare

    layout = loaded.layout(inputs["input_ids"], inputs.get("attention_mask"))  # the sample's own tokens
    inputs = prepare(model, spec.method, inputs, spec.options())  # a reducer's fewer vision placeholders
    limit = loaded.max_positions
    length = int(inputs["input_ids"].shape[1])
    if limit is not None and length + max_new_tokens > limit:
        raise VTWError(f"prompt too long: {length} tokens + {max_new_tokens} new tokens exceeds the model's "
                       f"{limit} positions")
    stop = list(gen_settings.stop) or None
    if spec.compiled:
        return _compiled(loaded, inputs, k if k is not None else n, max_new_tokens, stop, layout)
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=gen_settings.do_sample)
    if gen_settings.do_sample:
        kw["temperature"] = gen_settings.temperature
        kw.update({name: val for name, val in (("top_p", gen_settings.top_p), ("top_k", gen_settings.top_k))
                   if val is not None})
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    tok = getattr(loaded.processor, "tokenizer", loaded.processor)
    if stop:
        kw["stopping_criteria"] = [_stop_on(tok, stop, length)]
    clock = _Clock(loaded.device)

    if spec.method == "rand" and seeds is None:
        seeds = [spec.seed or 0] * int(inputs["input_ids"].shape[0])
    ctx = context(model, spec.method, k, spec.positions, seeds=seeds, settings=spec.options())
    with seeded(spec.seed), ctx, torch.inference_mode():
        sync(loaded.device)
        start = time.perf_counter()
        result = model.generate(**inputs, streamer=clock, return_dict_in_generate=True, **kw)
        sync(loaded.device)
        end = time.perf_counter()
    from .measure import cache_bytes, cache_of

    cache = cache_of(result)
    seqs, counts, answers = _answers(result.sequences[:, length:], _eos_ids(model, tok), tok, stop)
    first = clock.first if clock.first is not None else end
    return Generation(answers=answers, tokens=seqs, new_tokens=counts,
                      num_vision_tokens=layout["num_vision_tokens"], num_text_tokens=layout["num_text_tokens"],
                      prefill_s=first - start, decode_s=end - first, total_s=end - start,
                      k=k if k is not None else n, kv_bytes=cache_bytes(cache) if cache is not None else None,
                      method="stock" if runs_stock(spec.method, k, n) else spec.method)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """torch's random generators seeded with ``seed`` inside the block and given back as they were after it
    (the CPU's and every initialised CUDA device's): sampling is reproducible, the caller's RNG untouched."""
    if seed is None:
        yield
        return
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _answers(new, eos: set[int], tok, stop: list[str] | None) -> tuple[list, list, list]:
    """Per row: the new tokens before the first end-of-sequence token, how many were generated (with it), the
    decoded answer cut at the stop strings."""
    seqs, counts = [], []
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        seqs.append(row[:cut])
        counts.append(min(cut + 1, len(row)))
    return seqs, counts, [cut_at(tok.decode(s, skip_special_tokens=True), stop).strip() for s in seqs]


def _compiled(loaded, inputs: dict, k: int, max_new_tokens: int, stop: list[str] | None, layout: dict) -> Generation:
    from .engine.compiled import decoder_for
    from .measure import cache_bytes

    model = loaded.model
    tok = getattr(loaded.processor, "tokenizer", loaded.processor)
    eos = _eos_ids(model, tok)
    dec = decoder_for(model, k)
    sync(loaded.device)
    start = time.perf_counter()
    state = dec.prefill(inputs, max_new_tokens)
    sync(loaded.device)
    first = time.perf_counter()
    new = dec.decode(state, sorted(eos) or None)
    sync(loaded.device)
    end = time.perf_counter()
    seqs, counts, answers = _answers(new, eos, tok, stop)
    return Generation(answers=answers, tokens=seqs, new_tokens=counts,
                      num_vision_tokens=layout["num_vision_tokens"], num_text_tokens=layout["num_text_tokens"],
                      prefill_s=first - start, decode_s=end - first, total_s=end - start, k=k,
                      kv_bytes=cache_bytes(state.cache), method="stock" if runs_stock("vtw", k, loaded.num_layers)
                      else "vtw")


def compare(loaded, inputs: dict, spec: RunSpec | None = None, *, warmup: int = 1,
            **settings: Any) -> dict[str, Generation]:
    """The paper's Fig. 6: the same inputs answered by the stock model and with VTW at ``spec``'s K.

    Each side runs ``warmup`` times untimed first, so the first call's one-off costs (allocations, kernel
    selection, lazy initialisation) land on neither; the timings are then one run each (``vtwctl profile``
    and ``measure`` repeat and take medians)."""
    spec = RunSpec.of(spec, **settings)
    sides = {"stock": replace(spec, method="stock"), "vtw": replace(spec, method="vtw")}
    for _ in range(warmup):
        for side in sides.values():
            generate(loaded, inputs, side)
    return {name: generate(loaded, inputs, side) for name, side in sides.items()}


def _stop_on(tokenizer, stop: list[str], start: int):
    """A stopping criterion that ends a row once its new text holds one of the ``stop`` strings.

    Decodes the last few new tokens of every row each step (one host sync per step, only when stop
    strings are given); transformers' own ``stop_strings`` needs a tokenizer whose vocabulary it can
    map to text, which word-level tokenizers are not.
    """
    import torch
    from transformers import StoppingCriteria

    window = 2 * max(len(s) for s in stop) + 8

    class StopOn(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tail = input_ids[:, start:][:, -window:]
            texts = tokenizer.batch_decode(tail, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop if s) for t in texts], dtype=torch.bool,
                                device=input_ids.device)

    return StopOn()


def cut_at(text: str, stop: list[str] | None) -> str:
    """``text`` up to the first of the ``stop`` strings (lmms-eval's ``until`` rule)."""
    for term in stop or ():
        if term:
            text = text.split(term)[0]
    return text


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(src)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        ids.add(pad)
    return ids
