"""A text-only KV-cache group for layers >= K, through vLLM's own KV-cache extension points.

- ``TextKVSpec``: the KV-cache spec of an attention layer >= K (an ``AttentionSpec``, as
  ``SlidingWindowSpec`` is, so vLLM's hybrid allocator puts these layers in KV-cache groups of
  their own). ``max_text_len`` (None: ``max_model_len``) bounds the text tokens of one request,
  which is what vLLM's startup sizing and its reported maximum concurrency count for these layers.
- ``TextKVManager``: vLLM's full-attention manager, asked for a request's *text* tokens instead of
  all its tokens: ``T(n)`` blocks' worth for the first n tokens, from the request's vision
  placeholders (``plan.VisionLayout``; at least one block, the ledger's key). Vision tokens never
  occupy its blocks, so vLLM's scheduler admits requests by what they really hold.
- ``VTWScheduler``: vLLM's scheduler (``Scheduler``, or ``AsyncScheduler`` when async scheduling
  is on), which hands its request table to the text managers: a manager only sees request ids.
  vLLM's ``scheduler_cls`` option selects it (``vtwctl serve`` passes it).

Both are registered with ``KVCacheSpecRegistry`` by ``vtwctl.integrations.vllm.register`` in every vLLM
process; nothing in vLLM is patched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vllm.utils.math_utils import cdiv
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import AttentionSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

from .kv_names import SCHEDULER
from .plan import VisionLayout


@dataclass(frozen=True, kw_only=True)
class TextKVSpec(AttentionSpec):
    """KV cache of an attention layer that only ever holds a request's text tokens (layers >= K)."""

    max_text_len: int | None = None

    @property
    def prefix_cacheable(self) -> bool:
        return False  # refused anyway: a text block's KV depends on tokens past the block's own tokens

    def text_budget(self, vllm_config: Any) -> int:
        n = vllm_config.model_config.max_model_len
        return n if self.max_text_len is None else min(n, self.max_text_len)

    def max_memory_usage_bytes(self, vllm_config: Any) -> int:
        return cdiv(self.text_budget(vllm_config), self.block_size) * self.page_size_bytes


def layout_of(request: Any) -> VisionLayout:
    """The vision rows of a vLLM ``Request``: the embedding positions of its multimodal placeholders
    (the rows vLLM's model runner marks ``is_multimodal``)."""
    items = []
    for feature in getattr(request, "mm_features", None) or ():
        pos = feature.mm_position
        is_embed = None if pos.is_embed is None else pos.is_embed.tolist()
        items.append((pos.offset, pos.length, is_embed))
    return VisionLayout.from_placeholders(items)


class TextKVManager(FullAttentionManager):
    """Blocks for a request's text tokens only (vLLM's full-attention bookkeeping otherwise)."""

    requests: Mapping[str, Any] | None = None  # bound by VTWScheduler: request id -> vLLM Request

    def __init__(self, kv_cache_spec, **kwargs) -> None:
        super().__init__(kv_cache_spec, **kwargs)
        self._layouts: dict[str, VisionLayout] = {}

    def text_tokens(self, request_id: str, num_tokens: int) -> int:
        """Slots this group needs for the request's first ``num_tokens`` tokens (at least 1)."""
        layout = self._layouts.get(request_id)
        if layout is None:
            if self.requests is None:
                raise RuntimeError("vtwctl's text-only KV cache needs vtwctl's scheduler: start vLLM with "
                                   f"scheduler_cls={SCHEDULER!r} (vtwctl serve does)")
            layout = self._layouts[request_id] = layout_of(self.requests[request_id])
        return max(1, layout.text_tokens(num_tokens))

    def get_num_blocks_to_allocate(self, request_id, num_tokens, new_computed_blocks, total_computed_tokens,
                                   num_local_computed_tokens, num_tokens_main_model, apply_admission_cap=False,
                                   prefill_end=0) -> int:
        return super().get_num_blocks_to_allocate(
            request_id, self.text_tokens(request_id, num_tokens), new_computed_blocks, total_computed_tokens,
            num_local_computed_tokens, num_tokens_main_model, apply_admission_cap=apply_admission_cap,
            prefill_end=prefill_end)

    def allocate_new_blocks(self, request_id, num_tokens, num_tokens_main_model):
        return super().allocate_new_blocks(request_id, self.text_tokens(request_id, num_tokens),
                                           num_tokens_main_model)

    def free(self, request_id: str) -> None:
        self._layouts.pop(request_id, None)
        super().free(request_id)

    def pop_blocks_for_free(self, request_id: str):
        self._layouts.pop(request_id, None)
        return super().pop_blocks_for_free(request_id)


def register_kv() -> None:
    """Register the spec and its manager (idempotent). vLLM fills its registry with the built-in specs
    on first use; fill it first, so that registering ours does not stop that."""
    KVCacheSpecRegistry._ensure_registered()
    KVCacheSpecRegistry.register(TextKVSpec, TextKVManager, uniform_type_base_spec=TextKVSpec)


_SCHEDULERS: dict[type, type] = {}


def _scheduler_class(base: type) -> type:
    cls = _SCHEDULERS.get(base)
    if cls is None:
        def __init__(self, *args, **kwargs):
            base.__init__(self, *args, **kwargs)
            self.vtw_preemptions = 0
            for manager in self.kv_cache_manager.coordinator.single_type_managers:
                if isinstance(manager, TextKVManager):
                    manager.requests = self.requests

        def _preempt_request(self, request, *args, **kwargs):
            self.vtw_preemptions += 1  # (a count for logs and tests; the preemption itself is vLLM's)
            return base._preempt_request(self, request, *args, **kwargs)

        cls = _SCHEDULERS[base] = type("VTW" + base.__name__, (base,), {
            "__init__": __init__, "_preempt_request": _preempt_request, "__module__": __name__,
            "__qualname__": "VTW" + base.__name__,
            "__doc__": f"vLLM's {base.__name__}, with its requests bound to vtwctl's text-only KV managers."})
    return cls


class VTWScheduler:
    """``scheduler_cls`` for VTW: vLLM's ``AsyncScheduler`` or ``Scheduler`` (as vLLM would pick it), with
    its request table handed to the text-only KV managers."""

    def __new__(cls, *args, **kwargs):
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler

        config = kwargs.get("vllm_config", args[0] if args else None)
        base = AsyncScheduler if config.scheduler_config.async_scheduling else Scheduler
        return _scheduler_class(base)(*args, **kwargs)


def is_vtw_scheduler(value: Any) -> bool:
    """Whether vLLM's ``scheduler_cls`` setting selects ``VTWScheduler`` (or a subclass of it)."""
    if isinstance(value, str):
        if value == SCHEDULER:
            return True
        try:
            from vllm.utils.import_utils import resolve_obj_by_qualname

            value = resolve_obj_by_qualname(value)
        except Exception:  # noqa: BLE001 - an unresolvable name is not ours
            return False
    return isinstance(value, type) and issubclass(value, VTWScheduler)
