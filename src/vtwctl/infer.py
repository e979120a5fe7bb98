"""Inference with or without VTW, timed: prefill (time to first token), decode, total."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

from .errors import VTWError, check_k
from .withdraw import withdraw


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

    def to_dict(self) -> dict:
        return asdict(self)


def generate(loaded, inputs: dict, k: int | None = None, positions: str = "keep", max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, seed: int | None = None,
             top_p: float | None = None, top_k: int | None = None) -> Generation:
    """Generate for a batch of inputs; ``k=None`` (or N) is the stock model.

    ``top_p``/``top_k`` only apply when sampling (None: the model's generation config).
    """
    import torch

    model = loaded.model
    n = loaded.num_layers
    check_k(k, n)
    limit = loaded.max_positions
    length = int(inputs["input_ids"].shape[1])
    if limit is not None and length + max_new_tokens > limit:
        raise VTWError(f"prompt too long: {length} tokens + {max_new_tokens} new tokens exceeds the model's "
                       f"{limit} positions")
    layout = loaded.layout(inputs["input_ids"], inputs.get("attention_mask"))
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample)
    if do_sample:
        kw["temperature"] = temperature
        kw.update({name: val for name, val in (("top_p", top_p), ("top_k", top_k)) if val is not None})
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    if seed is not None:
        torch.manual_seed(seed)
    clock = _Clock(loaded.device)
    ctx = withdraw(model, k, positions) if k is not None and k < n else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        sync(loaded.device)
        start = time.perf_counter()
        out = model.generate(**inputs, streamer=clock, **kw)
        sync(loaded.device)
        end = time.perf_counter()
    new = out[:, length:]
    tok = getattr(loaded.processor, "tokenizer", loaded.processor)
    eos = _eos_ids(model, tok)
    seqs, counts = [], []
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        seqs.append(row[:cut])
        counts.append(min(cut + 1, len(row)))
    answers = [tok.decode(s, skip_special_tokens=True).strip() for s in seqs]
    first = clock.first if clock.first is not None else end
    return Generation(answers=answers, tokens=seqs, new_tokens=counts,
                      num_vision_tokens=layout["num_vision_tokens"], num_text_tokens=layout["num_text_tokens"],
                      prefill_s=first - start, decode_s=end - first, total_s=end - start,
                      k=k if k is not None else n)


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
