"""vLLM model classes with Visual Tokens Withdrawal (imported by vLLM only, through the plugin).

Each class subclasses vLLM's own multimodal class (so its processor registration, weight loading
and encoder are vLLM's) and adds ``_VTW``. With ``vtw_k = K`` in the model config:

- **KV.** The attention layers >= K report ``kv.TextKVSpec``, so vLLM's hybrid allocator gives them
  KV-cache groups of their own whose blocks hold a request's text tokens only (``kv.TextKVManager``
  counts them; ``kv.VTWScheduler`` tells it which rows are vision). A text token ``t`` is stored at
  its text rank ``t - V(t)`` there.
- **Metadata.** Those layers get a subclass of their own attention backend (vLLM's
  ``subclass_attention_backend``) whose metadata builder is vLLM's builder for that backend, fed
  text-row ``CommonAttentionMetadata``: query rows, sequence lengths in text ranks, text-rank slots
  in the group's own block table. A step without vision rows (decoding; a prompt's text after its
  images) is planned right in the builder, before the forward, and the forward is vLLM's own
  (its compiled graph in vLLM's compile mode): every row goes through every layer, only layers >= K
  read and write text-rank KV. A step with vision rows is planned in the forward, where vLLM's
  ``is_multimodal`` mask of the step is known (``embed_input_ids``).
- **Forward of a step with vision rows.** Layers 0..K-1 on every row, then layers K..N-1 and the
  final norm on the text rows only, with their original positions ("Keep", Table 6; Qwen's M-RoPE
  rows keep their 3 components). Both halves are vLLM ``@support_torch_compile`` modules with a
  dynamic row count, compiled during vLLM's warm-up in its compile mode, eager with
  ``enforce_eager``. Vision rows leave with zeros, as in ``vtwctl.engine.hooks``.

Without ``vtw_k`` (or with K = N, the stock model) the class is vLLM's own.

The classes (module attributes ``VTW`` + vLLM's architecture name; ``VTWUnverified_`` + the name for
the guards of ``vtwctl.integrations.vllm.UNVERIFIED``) are built on first access (module ``__getattr__``), so
that serving one family imports only its own vLLM module. Their ``__name__`` is vLLM's class name
(vLLM dispatches on it), their ``__qualname__`` the attribute name.
"""

from __future__ import annotations

import re
import threading
import types
from dataclasses import dataclass, field

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.models.utils import WeightsMapper
from vllm.sequence import IntermediateTensors
from vllm.v1.attention.backend import subclass_attention_backend
from vllm.v1.kv_cache_interface import replace_as

from ...errors import VTWError
from .config import k_from_config, refusals
from .kv import SCHEDULER, TextKVSpec, is_vtw_scheduler
from .plan import TextPlan, VisionLedger, plan_step

logger = init_logger("vllm.plugins.vtwctl")  # under "vllm" so that vLLM's log settings show it

# CLIP/SigLIP towers saved by transformers >= 5 drop the ``vision_model.`` level vLLM's towers keep.
_FLAT_TOWER = WeightsMapper(orig_to_new_regex={
    re.compile(r"^(model\.)?vision_tower\.(embeddings|encoder|pre_layrnorm|post_layernorm|head)\."):
        r"vision_tower.vision_model.\2.",
})


# -- one step, as the text groups' metadata builders and the forward share it -------------------------

@dataclass
class _Step:
    key: object  # vLLM's query_start_loc_cpu tensor of the step: every group's common metadata shares it
    commons: dict = field(default_factory=dict)  # builder -> its group's CommonAttentionMetadata, lead first
    plan: TextPlan | None = None  # set by the lead builder when the step has no vision rows


class _TextRows:
    """The text-only KV groups of one model: their builders, the vision ledger and the current step.

    vLLM's runner builds every KV group's metadata in group order, then runs the forward. The first
    text group's builder (the lead) opens the step; its block table's first column keys the ledger."""

    def __init__(self) -> None:
        self.ledger = VisionLedger()
        self.lead = None
        self.step: _Step | None = None
        self.capturing = False

    def build(self, builder, common_prefix_len: int, cm, fast_build: bool):
        """The metadata of one text group for a step."""
        if self.capturing:
            return builder.build_text(common_prefix_len, cm, fast_build)
        step = self.step
        if step is None or step.key is not cm.query_start_loc_cpu:
            self.lead = self.lead or builder
            if builder is not self.lead:
                raise RuntimeError("vtwctl VTW: the text KV groups' metadata were built out of order")
            step = self.step = _Step(key=cm.query_start_loc_cpu)
            prefilling = cm.is_prefilling
            if prefilling is not None and not bool(prefilling[:cm.num_reqs].any()):
                step.plan = plan_step(_cpu(cm.query_start_loc_cpu), _seq_lens_cpu(cm),
                                      _keys(cm.block_table_tensor, cm.num_reqs), None, self.ledger)
        step.commons[builder] = cm
        if step.plan is None:  # vision rows: planned in the forward; vLLM's own rows until then
            return builder.build_text(common_prefix_len, cm, fast_build)
        # no vision rows: every row goes on; text ranks and text-rank slots in place of vLLM's, written into
        # the same slot-mapping tensor the forward context hands these layers
        slots = step.plan.slots(cm.block_table_tensor, builder.kv_cache_spec.block_size)
        cm.slot_mapping[:slots.numel()].copy_(slots)
        return builder.build_text(common_prefix_len, _text_common(cm, step.plan, cm.slot_mapping), fast_build)

    def take_step(self) -> _Step | None:
        step, self.step = self.step, None
        return step


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t if t.device.type == "cpu" else t.cpu()


def _seq_lens_cpu(cm) -> torch.Tensor:
    # exact for every row without speculative decoding (refused); vLLM keeps it on the host
    lens = cm.seq_lens_cpu_upper_bound if cm.seq_lens_cpu_upper_bound is not None else cm.seq_lens
    return _cpu(lens)[:cm.num_reqs]


def _keys(block_table: torch.Tensor, num_reqs: int) -> list[int]:
    return _cpu(block_table[:num_reqs, 0]).tolist()


def _text_common(cm, plan: TextPlan, slots: torch.Tensor):
    """vLLM's common metadata of a step restricted to its text rows (plan), in text ranks."""
    device = cm.query_start_loc.device
    if plan.all_rows and plan.requests.numel() == cm.num_reqs:
        lens_cpu = plan.seq_lens
        return cm.replace(seq_lens=lens_cpu.to(device, non_blocking=True), seq_lens_cpu_upper_bound=lens_cpu,
                          max_seq_len=plan.max_seq_len, slot_mapping=slots, _num_computed_tokens_cache=None,
                          _token_to_req_indices_cache=None, dcp_local_seq_lens=None,
                          dcp_local_seq_lens_cpu_upper_bound=None)
    reqs = plan.requests.to(device)
    qsl = plan.query_start_loc
    return cm.replace(
        query_start_loc=qsl.to(device, non_blocking=True), query_start_loc_cpu=qsl,
        seq_lens=plan.seq_lens.to(device, non_blocking=True), seq_lens_cpu_upper_bound=plan.seq_lens,
        num_reqs=int(plan.requests.numel()), num_actual_tokens=plan.num_rows, max_query_len=plan.max_query_len,
        max_seq_len=plan.max_seq_len, block_table_tensor=cm.block_table_tensor.index_select(0, reqs),
        slot_mapping=slots, causal=True,
        positions=None if cm.positions is None else cm.positions.index_select(-1, plan.rows.to(device)),
        is_prefilling=None if cm.is_prefilling is None else cm.is_prefilling[plan.requests],
        req_idx=None if cm.req_idx is None else cm.req_idx[plan.requests.numpy()],
        mm_req_doc_ranges=None, logits_indices_padded=None, num_logits_indices=None, max_logits_per_req=None,
        encoder_seq_lens=None, encoder_seq_lens_cpu=None, dcp_local_seq_lens=None,
        dcp_local_seq_lens_cpu_upper_bound=None, rswa_prefix_lens=None, replayssm_decode_base_cpu=None,
        _num_computed_tokens_cache=None, _token_to_req_indices_cache=None,
    )


def _text_backend(backend: type, rows: _TextRows) -> type:
    """``backend`` with a metadata builder that builds text-row metadata through ``backend``'s own builder."""
    base = backend.get_builder_cls()

    class TextRowsBuilder(base):
        supports_update_block_table = False  # each text group gets its own text-rank slots

        def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
            return rows.build(self, common_prefix_len, common_attn_metadata, fast_build)

        def build_for_cudagraph_capture(self, common_attn_metadata):
            rows.capturing = True
            try:
                return super().build_for_cudagraph_capture(common_attn_metadata)
            finally:
                rows.capturing = False

        def build_text(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
            return base.build(self, common_prefix_len, common_attn_metadata, fast_build)

    TextRowsBuilder.__qualname__ = TextRowsBuilder.__name__ = "VTWText" + base.__name__
    return subclass_attention_backend("VTWText", backend, TextRowsBuilder)


# -- the two halves of a step with vision rows, each a vLLM-compiled module -----------------------------

def _run_layers(layers, positions, hidden, residual, deepstack=None):
    for i, layer in enumerate(layers):
        hidden, residual = layer(positions, hidden, residual)
        if deepstack is not None and f"deepstack_input_embeds_{i}" in deepstack.tensors:
            hidden = hidden + deepstack[f"deepstack_input_embeds_{i}"]  # Qwen3-VL, as its text model adds them
    return hidden, residual


class _Front(nn.Module):
    """Decoder layers 0..K-1 over every row of the step (with Qwen3-VL's deepstack inputs, if any)."""

    def __init__(self, *, vllm_config, prefix: str = "", layers=()) -> None:
        super().__init__()
        self.__dict__["_layers"] = list(layers)  # not submodules: the weights stay where vLLM loads them

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, deepstack: IntermediateTensors | None):
        return _run_layers(self._layers, positions, hidden_states, None, deepstack)


class _Back(nn.Module):
    """Decoder layers K..N-1 and the final norm over the step's text rows."""

    def __init__(self, *, vllm_config, prefix: str = "", layers=(), norm=None) -> None:
        super().__init__()
        self.__dict__["_layers"] = list(layers)
        self.__dict__["_norm"] = norm

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None):
        hidden_states, residual = _run_layers(self._layers, positions, hidden_states, residual)
        hidden_states, _ = self._norm(hidden_states, residual)
        return hidden_states


def _compiled(base: type, tag: str, dims: dict) -> type:
    """``base`` as a vLLM ``@support_torch_compile`` class of its own, named by ``tag``.

    vLLM keys its compiled-artifact cache by the config hash (which leaves ``hf_overrides``, and so K,
    out) and the forward's ``__qualname__``: the tag (K and N) in the qualname keeps a graph compiled at
    one K from being loaded at another. A fresh class and function per tag also keeps vLLM's per-class
    bytecode dispatch apart."""
    fn = base.forward
    forward = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    name = f"{base.__name__}_{tag}"
    forward.__qualname__ = f"{name}.forward"
    cls = type(name, (base,), {"forward": forward, "__module__": __name__, "__qualname__": name})
    return support_torch_compile(dynamic_arg_dims=dims)(cls)


# -- the mixin -----------------------------------------------------------------------------------------

class _VTW:
    """The mixin. Put it first in the bases, before vLLM's class."""

    requires_raw_input_tokens = True

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.vtw_k: int | None = None
        self._vtw_rows: _TextRows | None = None
        self._vtw_vision: torch.Tensor | None = None
        text = _decoder(self)
        attn = [_attention_of(layer) for layer in text.layers]
        hf_config = vllm_config.model_config.hf_config
        self._vtw_vision_ids = torch.tensor(
            [int(i) for i in (getattr(hf_config, "image_token_id", None), getattr(hf_config, "video_token_id", None),
                              getattr(hf_config, "image_token_index", None),
                              getattr(hf_config, "video_token_index", None)) if i is not None])
        n = len(text.layers)
        k = k_from_config(hf_config, n, default_model=vllm_config.model_config.model)
        if k is None or k == n:  # off, or the stock model
            return
        windows = [a.sliding_window for a in attn if getattr(a, "sliding_window", None) not in (None, -1)]
        problems = refusals(
            prefix_caching=bool(vllm_config.cache_config.enable_prefix_caching),
            pipeline_parallel=vllm_config.parallel_config.pipeline_parallel_size,
            speculative=vllm_config.speculative_config is not None,
            kv_transfer=vllm_config.kv_transfer_config is not None,
            # refused only where the window can bind: one >= max_model_len is full attention (config.refusals)
            sliding_window=min(windows, default=None), max_model_len=vllm_config.model_config.max_model_len,
            hybrid_kv_off=bool(vllm_config.scheduler_config.disable_hybrid_kv_cache_manager),
            decode_context_parallel=vllm_config.parallel_config.decode_context_parallel_size,
            scheduler_ok=is_vtw_scheduler(vllm_config.scheduler_config.scheduler_cls),
        )
        if problems:
            raise VTWError("vtwctl VTW cannot run: " + "; ".join(problems))
        self.vtw_k = k
        self._vtw_rows = rows = _TextRows()
        max_text_len = getattr(hf_config, "vtw_max_text_len", None)
        backends: dict[type, type] = {}  # each of vLLM's backends for these layers -> its text-row subclass
        for a in attn[k:]:
            stock_spec = a.get_kv_cache_spec

            # a sliding window here is one that never binds (>= max_model_len; refusals): a text group holds every
            # text token, so the window's fields (extra_retained_tokens: SlidingWindowSpec's) go
            def text_spec(config, stock_spec=stock_spec):
                return replace_as(stock_spec(config), TextKVSpec, drop=("sliding_window", "extra_retained_tokens",
                                                                         "attention_chunk_size", "non_causal"),
                                  max_text_len=None if max_text_len is None else int(max_text_len))

            a.get_kv_cache_spec = text_spec
            stock_backend = a.get_attn_backend()
            if stock_backend not in backends:
                backends[stock_backend] = _text_backend(stock_backend, rows)
            a.attn_backend = backends[stock_backend]
        tag = f"vtw_k{k}_of{n}"
        front = _compiled(_Front, tag, {"positions": -1, "hidden_states": 0, "deepstack": 0})
        back = _compiled(_Back, tag, {"positions": -1, "hidden_states": 0, "residual": 0})
        self.__dict__["_vtw_front"] = front(vllm_config=vllm_config, prefix=f"{prefix}vtw_front",
                                            layers=text.layers[:k]) if k > 0 else None
        self.__dict__["_vtw_back"] = back(vllm_config=vllm_config, prefix=f"{prefix}vtw_back",
                                          layers=text.layers[k:], norm=text.norm)
        self._vtw_warm = False
        logger.info("vtwctl: Visual Tokens Withdrawal before layer %d of %d; layers %d..%d keep a text-only KV "
                    "cache", k, n, k, n - 1)

    # -- vLLM interface ------------------------------------------------------------------------
    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None, **kw):
        if self._vtw_rows is not None:  # the rows that receive encoder outputs: the step's vision rows
            self._vtw_vision = (is_multimodal if is_multimodal is not None
                                else torch.zeros(input_ids.shape[0], dtype=torch.bool))
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal, **kw)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        rows = self._vtw_rows
        if rows is None:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        vision, self._vtw_vision = self._vtw_vision, None
        step = rows.take_step()
        if step is None:  # one of vLLM's dummy runs (no attention metadata): vLLM's forward
            out = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
            if not self._vtw_warm:
                self._vtw_compile(input_ids, positions, inputs_embeds)
            return out
        if step.plan is not None:  # no vision rows, planned by the builders: vLLM's forward, text-rank KV
            self._count(step, None, step.plan)
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        text = _decoder(self)
        hidden = inputs_embeds if inputs_embeds is not None else text.embed_input_ids(input_ids)
        lead = step.commons[rows.lead]
        vision = self._vision_rows(vision, input_ids, hidden.shape[0])
        plan = plan_step(_cpu(lead.query_start_loc_cpu), _seq_lens_cpu(lead),
                         _keys(lead.block_table_tensor, lead.num_reqs), vision, rows.ledger)
        self._count(step, vision, plan)
        if plan.all_rows:  # no vision rows after all (text-only prompts): vLLM's forward, text-rank KV
            with _swapped(self._vtw_text_metadata(step, plan)):
                return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        with _no_cudagraphs():  # vLLM's CUDA graphs are keyed by the step's row count, not the text rows'
            residual = None
            if self._vtw_front is not None:
                deepstack = self._vtw_deepstack(hidden.shape[0])
                hidden, residual = self._vtw_front(positions, hidden, deepstack)
                if deepstack is not None:  # as vLLM's forward does after its layers
                    self._clear_deepstack_input_embeds(hidden.shape[0])
            out = torch.zeros_like(hidden)
            if plan.num_rows == 0:
                return out
            idx = plan.rows.to(hidden.device)
            h = hidden.index_select(0, idx)
            r = residual.index_select(0, idx) if residual is not None else None
            pos = positions.index_select(-1, idx)
            with _swapped(self._vtw_text_metadata(step, plan)):
                h = self._vtw_back(pos, h, r)
        out.index_copy_(0, idx, h)
        return out

    # -- helpers -------------------------------------------------------------------------------
    def _vtw_text_metadata(self, step: _Step, plan: TextPlan) -> list[tuple[list[str], object, torch.Tensor]]:
        """(layer names, metadata, slots) per text group, built by each group's own builder."""
        out = []
        for builder, cm in step.commons.items():
            slots = plan.slots(cm.block_table_tensor, builder.kv_cache_spec.block_size)
            out.append((builder.layer_names, builder.build_text(0, _text_common(cm, plan, slots)), slots))
        return out

    def _vtw_compile(self, input_ids, positions, inputs_embeds) -> None:
        """In one of vLLM's dummy runs (its warm-up), run both halves once, so that vLLM compiles them then
        (in its compile mode) and not in the first request that holds an image."""
        self._vtw_warm = True
        if self._vtw_back.do_not_compile:  # eager (enforce_eager): nothing to compile
            return
        text = _decoder(self)
        hidden = inputs_embeds if inputs_embeds is not None else text.embed_input_ids(input_ids)
        residual = None
        if self._vtw_front is not None:
            hidden, residual = self._vtw_front(positions, hidden, self._vtw_deepstack(hidden.shape[0]))
        self._vtw_back(positions, hidden, residual)

    def _vtw_deepstack(self, rows: int):
        """Qwen3-VL's deepstack inputs of the step (vision features added after the first layers), else None.

        Always an ``IntermediateTensors`` for a model with deepstack buffers (zeros where the step has no
        vision rows), never None: ``_Front`` is compiled with its guards dropped, so the warm-up's dummy run
        fixes the argument's kind for every later step."""
        get = getattr(self, "_get_deepstack_input_embeds", None)
        return None if get is None else get(rows)

    def _count(self, step: _Step, vision, plan: TextPlan) -> None:
        """Step shapes seen (read by the tests to show which cases a run covered)."""
        stats = self.__dict__.setdefault("vtw_stats", dict.fromkeys(
            ("steps", "vision_rows", "text_rows", "vision_only_chunks", "mixed_prefill_decode",
             "planned_in_builder"), 0))
        cm = next(iter(step.commons.values()))
        q = (cm.query_start_loc_cpu[1:cm.num_reqs + 1] - cm.query_start_loc_cpu[:cm.num_reqs]).cpu()
        stats["steps"] += 1
        stats["vision_rows"] += 0 if vision is None else int(vision.sum())
        stats["text_rows"] += plan.num_rows
        stats["vision_only_chunks"] += int((q > 0).sum()) - int(plan.requests.numel())
        stats["mixed_prefill_decode"] += int(bool((q == 1).any() and (q > 1).any()))
        stats["planned_in_builder"] += int(vision is None)

    def _vision_rows(self, vision, input_ids, rows: int) -> torch.Tensor:
        if vision is None:  # nothing embedded this step: the token ids tell (none, in vLLM's real steps)
            if input_ids is None:
                return torch.zeros(rows, dtype=torch.bool)
            return torch.isin(input_ids.cpu(), self._vtw_vision_ids)
        vision = vision.to(torch.bool).cpu().flatten()
        if vision.numel() < rows:  # rows past the scheduled tokens are padding
            vision = torch.cat([vision, vision.new_zeros(rows - vision.numel())])
        return vision[:rows]


def _decoder(model) -> nn.Module:
    """The text decoder of a vLLM multimodal model: the module holding its decoder ``layers`` and final
    ``norm`` (``language_model.model`` in most classes, ``model.text_model`` in Idefics3/SmolVLM)."""
    for path in ("language_model.model", "model.text_model", "model.language_model", "language_model"):
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if module is not None and hasattr(module, "layers") and hasattr(module, "norm"):
            return module
    raise VTWError(f"vtwctl VTW: cannot find the text decoder of {type(model).__name__}")


def _attention_of(layer) -> Attention:
    found = [m for m in layer.modules() if isinstance(m, Attention)]
    if len(found) != 1:
        raise VTWError(f"vtwctl VTW: expected one attention module per decoder layer, found {len(found)}")
    return found[0]


class _no_cudagraphs:
    """Run the compiled halves without vLLM's CUDA graphs (a no-op on the CPU, which has none): vLLM captures
    and replays them by the step's batch descriptor, which the text rows of layers >= K do not match."""

    def __enter__(self):
        from vllm.config import CUDAGraphMode

        self.context = get_forward_context()
        self.mode = self.context.cudagraph_runtime_mode
        self.context.cudagraph_runtime_mode = CUDAGraphMode.NONE
        return self

    def __exit__(self, *exc):
        self.context.cudagraph_runtime_mode = self.mode
        return False


class _swapped:
    """Give each text group's layers its text-only metadata and slots for the block; put vLLM's back after."""

    def __init__(self, groups: list[tuple[list[str], object, torch.Tensor]]):
        self.groups = groups
        self.saved: list[tuple] = []

    def __enter__(self):
        context = get_forward_context()
        self.attn, self.slots = context.attn_metadata, context.slot_mapping
        for names, meta, slots in self.groups:
            for name in names:
                self.saved.append((name, self.attn[name], self.slots.get(name)))
                self.attn[name] = meta
                self.slots[name] = slots
        return self

    def __exit__(self, *exc):
        for name, meta, slot in self.saved:
            self.attn[name] = meta
            if slot is None:
                self.slots.pop(name, None)
            else:
                self.slots[name] = slot
        return False


# -- the front end: prompts VTW cannot answer are a 400, not a token drawn from nothing ------------------

_DUMMY = threading.local()  # set while vLLM builds its profiling inputs (they may end on a placeholder)


def _check_prompt(model_config, out) -> None:
    """A ``VLLMValidationError`` (HTTP 400) for a prompt VTW cannot run: one that ends on a vision row, or
    (with ``vtw_max_text_len``) holds more text tokens than the text-only KV cache was sized for."""
    from vllm.exceptions import VLLMValidationError

    from ...errors import ENDS_ON_VISION
    from .plan import VisionLayout

    hf = model_config.hf_config
    k = getattr(hf, "vtw_k", None)
    layers = getattr(model_config.hf_text_config, "num_hidden_layers", None)
    if k is None or (layers is not None and str(k).strip() == str(layers)):  # off, or the stock model
        return
    ids = out["prompt_token_ids"]
    items = [(p.offset, p.length, None if p.is_embed is None else p.is_embed.tolist())
             for ranges in out["mm_placeholders"].values() for p in ranges]
    layout = VisionLayout.from_placeholders(items)
    n = len(ids)
    if n and layout.vision_before(n) > layout.vision_before(n - 1):
        raise VLLMValidationError(f"vtwctl VTW: the prompt {ENDS_ON_VISION}")
    budget = getattr(hf, "vtw_max_text_len", None)
    if budget is not None and layout.text_tokens(n) >= int(budget):
        raise VLLMValidationError(f"vtwctl VTW: the prompt holds {layout.text_tokens(n)} text tokens; this server "
                                  f"keeps at most {budget} per request (prompt text and output, --max-text-len)")


_GUARDED: dict[type, type] = {}


def _guarded_processor(base: type) -> type:
    cls = _GUARDED.get(base)
    if cls is None:
        def get_dummy_mm_inputs(self, *args, **kwargs):
            _DUMMY.on = True
            try:
                return base.get_dummy_mm_inputs(self, *args, **kwargs)
            finally:
                _DUMMY.on = False

        def apply(self, inputs, timing_ctx):
            out = base.apply(self, inputs, timing_ctx)
            if not getattr(_DUMMY, "on", False):
                _check_prompt(self.info.ctx.model_config, out)
            return out

        cls = _GUARDED[base] = type("VTW" + base.__name__, (base,), {
            "get_dummy_mm_inputs": get_dummy_mm_inputs, "apply": apply, "__module__": __name__})
    return cls


def _guarded_factories(stock):
    """The class's multimodal processor factories, with the processor refusing what VTW cannot run."""
    from vllm.multimodal.registry import _ProcessorFactories

    def processor(info, dummy_inputs, *args, **kwargs):
        proc = stock.processor(info, dummy_inputs, *args, **kwargs)
        proc.__class__ = _guarded_processor(type(proc))
        return proc

    return _ProcessorFactories(info=stock.info, dummy_inputs=stock.dummy_inputs, processor=processor)


# the architectures whose CLIP tower vLLM loads under flat names (the demo checkpoint's are the hub's)
_LLAVA_TOWER = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                "LlavaOnevisionForConditionalGeneration", "LlavaNextVideoForConditionalGeneration")


class _Unverified:
    """A guard for an architecture VTW is not verified on: refuses ``vtw_k``, else vLLM's class as is."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        if getattr(vllm_config.model_config.hf_config, "vtw_k", None) is not None:
            from . import ARCHITECTURES, WHY_UNVERIFIED

            why = WHY_UNVERIFIED.get(self._vtw_arch)  # the reason, where the architecture was tried
            raise VTWError(f"vtwctl VTW cannot run: {self._vtw_arch} is not verified with VTW in vLLM "
                           + (f"({why}); " if why else f"(verified: {', '.join(ARCHITECTURES)}); ")
                           + "remove vtw_k to serve it without VTW")
        super().__init__(vllm_config=vllm_config, prefix=prefix)


def _vllm_class(arch: str):
    """vLLM's own class for ``arch`` (its registry's built-in entry, not the plugin's)."""
    import importlib

    from vllm.model_executor.models.registry import _MULTIMODAL_MODELS

    module, cls_name = _MULTIMODAL_MODELS[arch]
    return getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), cls_name)


def __getattr__(name: str):
    from . import ARCHITECTURES, GUARD_PREFIX, UNVERIFIED

    verified = {cls: arch for arch, cls in ARCHITECTURES.items()}
    if name in verified:  # vLLM's own class for the architecture (HF-format InternVL: its InternS1 class)
        arch = verified[name]
        stock = _vllm_class(arch)
        body = {"__doc__": f"vLLM's {stock.__name__} with Visual Tokens Withdrawal (vtwctl).",
                "_processor_factory": _guarded_factories(stock._processor_factory)}
        if arch in _LLAVA_TOWER:
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


__all__ = ["SCHEDULER"]
