"""vtwctl as a model inside lmms-eval: ``lmms-eval --model vtw --model_args pretrained=...,k=16``.

The model ``vtw`` is registered through lmms-eval's entry-point group ``lmms_eval.models``
(``pip install -e ".[lmms]"``); lmms-eval imports this module only when it lists its models, and
``import vtwctl`` never imports lmms-eval. The lmms-eval class (``VTW``, a "simple" model: prompts
from ``doc_to_text``, visuals from ``doc_to_visual``) is built on first access; everything it does
is in ``Runner`` and in ``vtwctl.integrations.lmms_eval.args``, which need no lmms-eval and are tested alone.

Model arguments (``--model_args key=value,...``; see docs/lmms-eval.md):
``pretrained`` (short name, hub id or local directory; default ``demo``), ``k`` (``INT``, ``auto``
= the calibration record of the model for the task, ``none`` = stock model), ``method``
(``vtw`` | ``fastv`` | ``baseline``), ``positions`` (``keep`` | ``rearrange``), ``ratio`` (FastV),
``eta`` and ``calibration`` (which record ``k=auto`` takes), ``profile_dir``, ``batch_size``,
``device``, ``dtype``, ``attn_implementation``, ``trust_remote_code``, ``frames`` (per video),
``max_new_tokens`` (when a task sets none), ``use_until`` (cut answers at the task's stop strings).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import VTWError
from ...spec import STOCK, K
from .args import (
    Options,
    apply_until,
    content_for,
    generation_settings,
    parse_model_args,
    plan_batches,
    resolve_k,
    run_spec,
    split_visuals,
)

MODEL_ID = "vtw"
CLASS_PATH = "vtwctl.integrations.lmms_eval.model.VTW"


def manifests() -> list:
    """The entry-point payload: lmms-eval's manifest for the model ``vtw`` (alias ``vtwctl``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=("vtwctl",))]


@dataclass
class Item:
    """One request: the prompt text, its visuals (a list, or a callable returning one, called when
    its batch runs) and its task; ``continuation`` for loglikelihood requests."""

    context: str
    visuals: Any
    task: str = ""
    gen_kwargs: dict = field(default_factory=dict)
    split: str = ""
    continuation: str = ""


@dataclass
class Answer:
    text: str
    input_tokens: int
    output_tokens: int


@dataclass
class Stats:
    requests: int = 0
    new_tokens: int = 0
    total_s: float = 0.0
    prefill_s: float = 0.0
    vision_tokens: int = 0
    text_tokens: int = 0


class Runner:
    """Loads the model once through vtwctl's core and answers lmms-eval's requests with VTW/FastV."""

    def __init__(self, opts: Options, loaded: Any = None, warn: Callable[[str], None] | None = None):
        self.opts = opts
        if loaded is None:
            from ...loading import load

            loaded = load(opts.pretrained, device=opts.device, dtype=opts.dtype,
                          attn_implementation=opts.attn_implementation, trust_remote_code=opts.trust_remote_code)
        self.loaded = loaded
        self.warn = warn or (lambda msg: None)
        self.stats = Stats()
        self._k: dict[str, int | None] = {}
        self._clamped = False

    def k_for(self, task: str) -> int | None:
        if task not in self._k:
            k, src = resolve_k(self.opts, self.loaded.name, self.loaded.num_layers, task)
            self._k[task] = k
            shown = k if k is not None else f"{self.loaded.num_layers} (no withdrawal)"
            self.warn(f"vtw: task {task}: method={self.opts.method} K={shown} ({src})")
        return self._k[task]

    def spec_for(self, task: str):
        """The run specification of ``task``'s requests: the model arguments' with K resolved for the task."""
        spec = self.opts.spec if self.opts.spec is not None else run_spec(self.opts)
        k = self.k_for(task)
        from ...engine.registry import uses_k

        if not uses_k(spec.method):  # the stock model, and the methods with their own layers (their settings)
            return spec
        return replace(spec, k=STOCK if k is None else K(k))

    def _engine(self, task: str):
        """The context manager a forward call of ``task`` runs in (``methods.context``)."""
        from ...methods import context

        spec = self.spec_for(task)
        k = spec.layer(self.loaded.num_layers)
        return context(self.loaded.model, spec.method, k, spec.positions, settings=spec.options())

    def _prepare(self, items: list[Item]) -> tuple[list, list, list]:
        """(prompts, images per row, video per row) for ``Loaded.build_inputs``; visuals read once."""
        prompts, images, videos = [], [], []
        for it in items:
            visuals = it.visuals() if callable(it.visuals) else it.visuals
            imgs, vid = split_visuals(visuals, self.opts.frames)
            if vid is not None and not self.loaded.takes_video:
                raise VTWError(f"{self.loaded.name} ({self.loaded.family}) does not take videos (task {it.task})")
            prompts.append(content_for(it.context, len(imgs), int(vid is not None)))
            images.append(imgs or None)
            videos.append(vid)
        return prompts, images, videos

    def generate(self, items: list[Item], progress: Callable[[int], None] | None = None) -> list[Answer]:
        from ...infer import generate

        out: list[Answer | None] = [None] * len(items)
        keys = [(it.task, it.split, it.gen_kwargs) for it in items]
        tok = getattr(self.loaded.processor, "tokenizer", self.loaded.processor)
        for batch in plan_batches(keys, self.opts.batch_size):
            rows = [items[i] for i in batch]
            settings = generation_settings(rows[0].gen_kwargs, self.opts.max_new_tokens, self.opts.use_until)
            prompts, images, videos = self._prepare(rows)
            inputs = self.loaded.build_inputs(prompts, images=images, videos=videos)
            max_new = self._fit(int(inputs["input_ids"].shape[1]), settings.max_new_tokens)
            gen = generate(self.loaded, inputs, self.spec_for(rows[0].task), max_new_tokens=max_new,
                           do_sample=settings.do_sample, temperature=settings.temperature, seed=settings.seed,
                           top_p=settings.top_p, top_k=settings.top_k)
            for j, i in enumerate(batch):
                text = apply_until(tok.decode(gen.tokens[j], skip_special_tokens=True), settings.until)
                out[i] = Answer(text, gen.num_vision_tokens[j] + gen.num_text_tokens[j], gen.new_tokens[j])
            s = self.stats
            s.requests += len(batch)
            s.new_tokens += sum(gen.new_tokens)
            s.total_s += gen.total_s
            s.prefill_s += gen.prefill_s
            s.vision_tokens += sum(gen.num_vision_tokens)
            s.text_tokens += sum(gen.num_text_tokens)
            if progress:
                progress(len(batch))
        return out  # type: ignore[return-value]

    def _fit(self, length: int, max_new: int) -> int:
        """``max_new`` new tokens, fewer when the prompt leaves less room in the model's positions."""
        limit = self.loaded.max_positions
        if limit is None or length + max_new <= limit:
            return max_new
        if length >= limit:
            raise VTWError(f"prompt too long: {length} tokens, the model has {limit} positions")
        if not self._clamped:  # once per run, not once per batch
            self._clamped = True
            self.warn(f"vtw: {length}-token prompt + {max_new} new tokens exceeds the model's {limit} positions; "
                      f"generating at most {limit - length} (and likewise for later requests)")
        return limit - length

    def loglikelihood(self, items: list[Item],
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(loss, is_greedy) per item, lmms-eval's convention: the mean negative log-likelihood of the
        continuation's tokens after the prompt (what its models return, and why its multiple_choice
        takes the argmin), and whether greedy decoding would produce them; withdrawal from layer K
        on, as in generation."""
        import torch

        out: list[tuple[float, bool] | None] = [None] * len(items)
        for batch in plan_batches([(it.task, it.split) for it in items], self.opts.batch_size):
            rows = [items[i] for i in batch]
            prompts, images, videos = self._prepare(rows)
            ctx_inputs = self.loaded.build_inputs(prompts, images=images, videos=videos)
            full = self.loaded.build_inputs(prompts, images=images, videos=videos,
                                            continuations=[it.continuation for it in rows])
            n_cont = (full["attention_mask"].sum(1) - ctx_inputs["attention_mask"].sum(1)).tolist()
            from ...methods import prepare

            spec = self.spec_for(rows[0].task)
            full = prepare(self.loaded.model, spec.method, full, spec.options())  # a reducer's inputs
            with self._engine(rows[0].task), torch.inference_mode():
                logits = self.loaded.model(**full, use_cache=False).logits
            length = full["input_ids"].shape[1]
            for j, i in enumerate(batch):
                n = int(n_cont[j])
                if n <= 0:
                    out[i] = (0.0, True)
                    continue
                target = full["input_ids"][j, length - n:]
                logp = torch.log_softmax(logits[j, length - n - 1:length - 1].float(), -1)
                nll = -float(logp.gather(-1, target[:, None]).sum()) / n
                out[i] = (nll, bool((logp.argmax(-1) == target).all()))
            if progress:
                progress(len(batch))
        return out  # type: ignore[return-value]

    def multi_round(self, item: Item, doc: Any, doc_to_text: Callable) -> list[str]:
        """lmms-eval's multi-round protocol: round 0 answers ``item``; then ``doc_to_text(doc,
        previous_output=..., round_idx=r, previous_round_info=...)`` returns (visuals, text, terminal,
        outputs so far, info) until ``terminal``. Each round is a fresh prompt."""
        outputs: list[str] = [self.generate([item])[0].text]
        info = None
        for round_idx in range(1, 1 << 20):
            visuals, text, terminal, kept, info = doc_to_text(doc, previous_output=list(outputs), round_idx=round_idx,
                                                              previous_round_info=info)
            outputs = list(kept)
            if terminal:
                break
            outputs.append(self.generate([replace(item, context=text, visuals=visuals)])[0].text)
        return outputs


# -- the lmms-eval class, built on first access ----------------------------------------------------
def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under ``accelerate launch``/torchrun: one GPU per process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and device == "auto":
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return (rank, world, device) if world > 1 else (0, 1, device)


def _build_class() -> type:
    from lmms_eval.api.instance import GenerationResult, TokenCounts, unwrap_generation_output
    from lmms_eval.api.model import lmms
    from loguru import logger
    from tqdm import tqdm

    class VTW(lmms):
        """vtwctl's Visual Tokens Withdrawal (or FastV) on a stock transformers model, in lmms-eval."""

        is_simple = True

        def __init__(self, pretrained: str = "demo", **kwargs: Any) -> None:
            super().__init__()
            opts = parse_model_args({"pretrained": pretrained, **kwargs})
            self._rank, self._world_size, device = _distributed(opts.device)
            self.runner = Runner(replace(opts, device=device), warn=logger.info)
            self.opts = opts

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            """``--model_args`` win over the evaluator's ``--batch_size``/``--device`` (which lmms-eval
            passes as well, so ``batch_size`` in model_args would otherwise be given twice)."""
            from lmms_eval.utils import simple_parse_args_string

            args = simple_parse_args_string(arg_string or "")
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
            return cls(**args, **extra)

        @property
        def model(self):
            return self.runner.loaded.model

        @property
        def tokenizer(self):
            return getattr(self.runner.loaded.processor, "tokenizer", self.runner.loaded.processor)

        @property
        def config(self):
            return self.model.config

        @property
        def batch_size(self) -> int:
            return self.opts.batch_size

        @property
        def device(self):
            return self.runner.loaded.device

        def _doc(self, task, split, doc_id):
            return self.task_dict[task][split][doc_id]

        def _visuals(self, doc_to_visual, task, split, doc_id):
            if doc_to_visual is None:
                return []
            return lambda: doc_to_visual(self._doc(task, split, doc_id))

        def _bar(self, total: int):
            return tqdm(total=total, disable=self.rank != 0, desc="Model Responding (vtw)")

        def generate_until(self, requests) -> list:
            items = []
            for req in requests:
                ctx, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                items.append(Item(ctx, self._visuals(doc_to_visual, task, split, doc_id), task, dict(gen_kwargs or {}),
                                  split))
            before = replace(self.runner.stats)
            with self._bar(len(items)) as bar:
                answers = self.runner.generate(items, progress=bar.update)
            for it, ans in zip(items, answers):
                self.cache_hook.add_partial("generate_until", (it.context, it.gen_kwargs), ans.text)
            self._log(before)
            return [GenerationResult(a.text, TokenCounts(input_tokens=a.input_tokens, output_tokens=a.output_tokens))
                    for a in answers]

        def _log(self, before: Stats) -> None:
            from lmms_eval.models.model_utils.gen_metrics import log_metrics

            s = self.runner.stats
            n, tokens, secs = s.requests - before.requests, s.new_tokens - before.new_tokens, s.total_s - before.total_s
            if n:
                log_metrics(total_elapsed_time=secs, total_gen_tokens=tokens, avg_speed=tokens / secs if secs else 0.0,
                            additional_metrics={"total_requests": n,
                                                "prefill_s": (s.prefill_s - before.prefill_s) / n,
                                                "vision_tokens": (s.vision_tokens - before.vision_tokens) / n,
                                                "text_tokens": (s.text_tokens - before.text_tokens) / n})

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            items = []
            for req in requests:
                if len(req.args) == 2:  # unconditional continuation (acc_mutual_info): text only
                    ctx, cont = req.args
                    items.append(Item(ctx, [], getattr(req, "task_name", "") or "", continuation=cont))
                    continue
                ctx, target, doc_to_visual, doc_id, task, split = req.args
                cont = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
                items.append(Item(ctx, self._visuals(doc_to_visual, task, split, doc_id), task, {}, split,
                                  continuation=str(cont)))
            with self._bar(len(items)) as bar:
                out = self.runner.loglikelihood(items, progress=bar.update)
            if unwrap_generation_output((0.5, True))[0] != (0.5, True):
                # lmms-eval 0.7.3's evaluator turns a bare (loss, is_greedy) tuple into its str();
                # a GenerationResult carries it through unchanged
                return [GenerationResult(r, None) for r in out]
            return out

        def generate_until_multi_round(self, requests) -> list:
            out = []
            with self._bar(len(requests)) as bar:
                for req in requests:
                    ctx, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
                    item = Item(ctx, self._visuals(doc_to_visual, task, split, doc_id), task,
                                {k: v for k, v in (gen_kwargs or {}).items() if k != "until"}, split)
                    out.append(self.runner.multi_round(item, self._doc(task, split, doc_id), doc_to_text))
                    bar.update(1)
            return out

    VTW.__module__ = __name__
    VTW.__qualname__ = "VTW"
    return VTW


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == "VTW":
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
