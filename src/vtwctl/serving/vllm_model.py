"""vLLM model classes with Visual Tokens Withdrawal (imported by vLLM only, through the plugin).

Each class subclasses vLLM's own multimodal class (so its processor registration, weight loading
and encoder are vLLM's) and adds ``_VTW``: with ``vtw_k = K`` in the model config, ``forward`` runs
decoder layers 0..K-1 on every row of the step, then layers K..N-1 on the text rows only, with
text-only attention metadata and KV slots at text ranks (``plan.py``). Without ``vtw_k`` (or with
K = N) ``forward`` is vLLM's.

Vision rows are known exactly: vLLM passes the step's ``is_multimodal`` mask (the rows that receive
encoder outputs) to ``embed_input_ids`` right before ``forward``; the model keeps it for that
forward. (``requires_raw_input_tokens`` makes vLLM pass the token ids too: they are the fallback in
steps that embed nothing, vLLM's dummy runs.)

With K set, this forward calls every decoder layer itself, so all layers run eagerly also in
vLLM's compile mode (vLLM compiles the text model's ``__call__``, one graph over all layers at one
row count, while the row set changes between layer K-1 and K); the compiled graph runs in vLLM's
warm-up and whenever K is off. Greedy tokens are the same in both modes (tests/test_vllm_serving.py).

The classes (module attributes ``VTW`` + vLLM's architecture name; ``VTWUnverified_`` + the name for
the guards of ``vtwctl.serving.UNVERIFIED``) are built on first access (module ``__getattr__``), so
that serving one family imports only its own vLLM module. Their ``__name__`` is vLLM's class name
(vLLM dispatches on it), their ``__qualname__`` the attribute name.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.models.utils import WeightsMapper

from ..errors import VTWError
from .config import k_from_config, refusals
from .plan import LedgerError, TextPlan, VisionLedger, plan_step, slots_for

logger = init_logger("vllm.plugins.vtwctl")  # under "vllm" so that vLLM's log settings show it

# CLIP/SigLIP towers saved by transformers >= 5 drop the ``vision_model.`` level vLLM's towers keep.
_FLAT_TOWER = WeightsMapper(orig_to_new_regex={
    re.compile(r"^(model\.)?vision_tower\.(embeddings|encoder|pre_layrnorm|post_layernorm|head)\."):
        r"vision_tower.vision_model.\2.",
})


class _VTW:
    """The mixin. Put it first in the bases, before vLLM's class."""

    requires_raw_input_tokens = True

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.vtw_k: int | None = None
        self._vtw_vision: torch.Tensor | None = None
        self._vtw_ledger = VisionLedger()
        text = self.language_model.model
        self._vtw_attn = [_attention_of(layer) for layer in text.layers]
        hf_config = vllm_config.model_config.hf_config
        self._vtw_vision_ids = torch.tensor(
            [int(i) for i in (getattr(hf_config, "image_token_id", None), getattr(hf_config, "video_token_id", None),
                              getattr(hf_config, "image_token_index", None)) if i is not None])
        k = k_from_config(hf_config, len(text.layers), default_model=vllm_config.model_config.model)
        if k is None:
            return
        problems = refusals(
            prefix_caching=bool(vllm_config.cache_config.enable_prefix_caching),
            pipeline_parallel=vllm_config.parallel_config.pipeline_parallel_size,
            tensor_parallel=vllm_config.parallel_config.tensor_parallel_size,
            speculative=vllm_config.speculative_config is not None,
            kv_transfer=vllm_config.kv_transfer_config is not None,
            backends={a.get_attn_backend().get_name() for a in self._vtw_attn},
            sliding_window=any(getattr(a, "sliding_window", None) not in (None, -1) for a in self._vtw_attn),
        )
        if problems:
            raise VTWError("vtwctl VTW cannot run: " + "; ".join(problems))
        self._vtw_dtype = vllm_config.model_config.dtype
        self._vtw_cache_dtype = vllm_config.cache_config.cache_dtype
        self.set_vtw_k(k)

    # -- public hooks --------------------------------------------------------------------------
    def set_vtw_k(self, k: int | None) -> None:
        """Change K between requests (None or N: stock). Only call with no request in flight."""
        n = len(self._vtw_attn)
        if k is not None and not 0 <= k <= n:
            raise ValueError(f"K must be in 0..{n}, got {k}")
        self.vtw_k = None if k is None or k == n else int(k)
        self.__dict__.pop("vtw_stats", None)
        if self.vtw_k is not None:
            logger.info("vtwctl: Visual Tokens Withdrawal before layer %d of %d", self.vtw_k, n)

    # -- vLLM interface ------------------------------------------------------------------------
    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None, **kw):
        self._vtw_vision = is_multimodal if multimodal_embeddings is not None and len(multimodal_embeddings) else None
        if self._vtw_vision is None:
            self._vtw_vision = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal, **kw)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        vision, self._vtw_vision = self._vtw_vision, None
        k = self.vtw_k
        context = _step_context(self._vtw_attn[k].layer_name) if k is not None else None
        if context is None:  # stock model, or a dummy run without attention metadata
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        text = self.language_model.model
        hidden = inputs_embeds if inputs_embeds is not None else text.embed_input_ids(input_ids)
        residual = None
        for layer in text.layers[:k]:
            hidden, residual = layer(positions, hidden, residual)
        rows = hidden.shape[0]
        vision = self._vision_rows(vision, input_ids, rows)
        meta = context.attn_metadata[self._vtw_attn[k].layer_name]
        plan = self._plan(meta, context, vision)
        self._count(meta, plan, vision)
        out = torch.zeros_like(hidden)
        if plan.num_rows == 0:
            return out
        idx = plan.rows.to(hidden.device)
        h = hidden.index_select(0, idx)
        r = residual.index_select(0, idx) if residual is not None else None
        pos = positions.index_select(-1, idx)
        with _swapped(context, [a.layer_name for a in self._vtw_attn[k:]], self._text_metadata(meta, plan), plan):
            for layer in text.layers[k:]:
                h, r = layer(pos, h, r)
        h, _ = text.norm(h, r)
        out.index_copy_(0, idx, h)
        return out

    # -- helpers -------------------------------------------------------------------------------
    def _count(self, meta, plan: TextPlan, vision) -> None:
        """Step shapes seen (read by the tests to show which cases a run covered)."""
        stats = self.__dict__.setdefault("vtw_stats", dict.fromkeys(
            ("steps", "vision_rows", "text_rows", "vision_only_chunks", "mixed_prefill_decode"), 0))
        q = (meta.query_start_loc[1:] - meta.query_start_loc[:-1]).cpu()
        stats["steps"] += 1
        stats["vision_rows"] += int(vision.sum())
        stats["text_rows"] += plan.num_rows
        stats["vision_only_chunks"] += int((q > 0).sum()) - int(plan.requests.numel())
        stats["mixed_prefill_decode"] += int(bool((q == 1).any() and (q > 1).any()))

    def _vision_rows(self, vision, input_ids, rows: int) -> torch.Tensor:
        if vision is None:  # nothing embedded this step (dummy run): fall back to the token ids
            if input_ids is None:
                return torch.zeros(rows, dtype=torch.bool)
            return torch.isin(input_ids.cpu(), self._vtw_vision_ids)
        vision = vision.to(torch.bool).cpu().flatten()
        if vision.numel() < rows:  # rows past the scheduled tokens are padding
            vision = torch.cat([vision, vision.new_zeros(rows - vision.numel())])
        return vision[:rows]

    def _plan(self, meta, context, vision) -> TextPlan:
        block_size = int(self._vtw_attn[self.vtw_k].kv_cache.shape[2])
        qsl, lens, table = meta.query_start_loc.cpu(), meta.seq_lens.cpu(), meta.block_table.cpu()
        # the slot layout this plan assumes must be the one vLLM used for the stock rows (checked in
        # steps with a prefill; decode-only steps are the hot path)
        stock = context.slot_mapping.get(self._vtw_attn[self.vtw_k].layer_name)
        if stock is not None and int(qsl[-1]) > len(lens):
            n = int(qsl[-1])
            q_lens = (qsl[1:] - qsl[:-1]).long()
            req = torch.repeat_interleave(torch.arange(len(lens)), q_lens)
            index = torch.arange(n) - qsl[:-1].long()[req] + (lens.long() - q_lens)[req]
            if not torch.equal(slots_for(table, req, index, block_size), stock[:n].cpu().long()):
                raise LedgerError("VTW: vLLM's slot mapping does not follow its block table; this layout is "
                                  "not supported")
        return plan_step(qsl, lens, table, vision, block_size, self._vtw_ledger)

    def _text_metadata(self, meta, plan: TextPlan):
        from vllm import _custom_ops as ops
        from vllm import envs

        attn = self._vtw_attn[self.vtw_k]
        impl = attn.impl
        qsl = plan.query_start_loc.to(meta.query_start_loc.dtype)
        lens = plan.seq_lens.to(meta.seq_lens.dtype)
        scheduler = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=int(lens.numel()), num_heads=impl.num_heads, num_kv_heads=impl.num_kv_heads,
            head_dim=impl.head_size, seq_lens=lens, dtype=self._vtw_dtype, query_start_loc=qsl, causal=True,
            sliding_window_size=-1, isa=attn.isa, enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
            dynamic_causal=None, kv_cache_dtype=self._vtw_cache_dtype,
        )
        return dataclasses.replace(
            meta, num_actual_tokens=plan.num_rows, max_query_len=plan.max_query_len, query_start_loc=qsl,
            max_seq_len=plan.max_seq_len, seq_lens=lens, block_table=meta.block_table.index_select(0, plan.requests),
            slot_mapping=plan.slots, scheduler_metadata=scheduler, causal=True, dynamic_causal=None,
            use_sdpa_prefill=False, num_decode_tokens=0, sdpa_attn_masks=None, sdpa_start_loc=None,
        )


def _attention_of(layer) -> Attention:
    found = [m for m in layer.modules() if isinstance(m, Attention)]
    if len(found) != 1:
        raise VTWError(f"vtwctl VTW: expected one attention module per decoder layer, found {len(found)}")
    return found[0]


def _step_context(layer_name: str):
    """The step's forward context if it carries per-layer attention metadata (else None)."""
    try:
        context = get_forward_context()
    except AssertionError:
        return None
    meta = context.attn_metadata
    if not isinstance(meta, dict) or meta.get(layer_name) is None or not isinstance(context.slot_mapping, dict):
        return None
    return context


class _swapped:
    """Give layers >= K the text-only metadata and slots for the block; put vLLM's back after."""

    def __init__(self, context, names: list[str], meta, plan: TextPlan):
        self.context, self.names, self.meta, self.slots = context, names, meta, plan.slots
        self.saved: list[tuple] = []

    def __enter__(self):
        attn, slots = self.context.attn_metadata, self.context.slot_mapping
        for name in self.names:
            self.saved.append((name, attn[name], slots.get(name)))
            attn[name] = self.meta
            slots[name] = self.slots
        return self

    def __exit__(self, *exc):
        attn, slots = self.context.attn_metadata, self.context.slot_mapping
        for name, meta, slot in self.saved:
            attn[name] = meta
            if slot is None:
                slots.pop(name, None)
            else:
                slots[name] = slot
        return False


# vtwctl class name -> (vLLM module, vLLM class); the families verified by tests/test_vllm_serving.py
STOCK = {
    "VTWLlavaForConditionalGeneration": ("vllm.model_executor.models.llava", "LlavaForConditionalGeneration"),
    "VTWLlavaNextForConditionalGeneration": ("vllm.model_executor.models.llava_next",
                                             "LlavaNextForConditionalGeneration"),
    "VTWLlavaOnevisionForConditionalGeneration": ("vllm.model_executor.models.llava_onevision",
                                                  "LlavaOnevisionForConditionalGeneration"),
    "VTWQwen2VLForConditionalGeneration": ("vllm.model_executor.models.qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "VTWQwen2_5_VLForConditionalGeneration": ("vllm.model_executor.models.qwen2_5_vl",
                                              "Qwen2_5_VLForConditionalGeneration"),
}
_LLAVA_TOWER = ("VTWLlavaForConditionalGeneration", "VTWLlavaNextForConditionalGeneration",
                "VTWLlavaOnevisionForConditionalGeneration")


class _Unverified:
    """A guard for an architecture VTW is not verified on: refuses ``vtw_k``, else vLLM's class as is."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        if getattr(vllm_config.model_config.hf_config, "vtw_k", None) is not None:
            from . import ARCHITECTURES

            raise VTWError(f"vtwctl VTW cannot run: {self._vtw_arch} is not verified with VTW in vLLM "
                           f"(verified: {', '.join(ARCHITECTURES)}); remove vtw_k to serve it without VTW")
        super().__init__(vllm_config=vllm_config, prefix=prefix)


def _vllm_class(arch: str):
    """vLLM's own class for ``arch`` (its registry's built-in entry, not the plugin's)."""
    import importlib

    from vllm.model_executor.models.registry import _MULTIMODAL_MODELS

    module, cls_name = _MULTIMODAL_MODELS[arch]
    return getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), cls_name)


def __getattr__(name: str):
    import importlib

    from . import GUARD_PREFIX, UNVERIFIED

    if name in STOCK:
        module, cls_name = STOCK[name]
        stock = getattr(importlib.import_module(module), cls_name)
        body = {"__doc__": f"vLLM's {cls_name} with Visual Tokens Withdrawal (vtwctl)."}
        if name in _LLAVA_TOWER:
            body["hf_to_vllm_mapper"] = _FLAT_TOWER | stock.hf_to_vllm_mapper
        mixin = _VTW
    elif name.startswith(GUARD_PREFIX) and name[len(GUARD_PREFIX):] in UNVERIFIED:
        arch = name[len(GUARD_PREFIX):]
        stock = _vllm_class(arch)
        body = {"_vtw_arch": arch, "__doc__": f"vLLM's {stock.__name__} for {arch}; refuses vtw_k (not verified)."}
        mixin = _Unverified
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # __name__ stays vLLM's: vLLM dispatches on model.__class__.__name__ in places (e.g. which config field
    # holds the image token for EAGLE drafts of Qwen2.5/3-VL); __qualname__ is how pickle and vLLM's lazy
    # registry find the class here
    cls = type(stock.__name__, (mixin, stock), {"__module__": __name__, "__qualname__": name, **body})
    globals()[name] = cls
    return cls
