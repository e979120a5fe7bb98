"""K for a served model, and the engine settings VTW refuses (no vLLM import here).

K comes from the model config, which vLLM's ``--hf-overrides`` sets: ``{"vtw_k": 16}``, or
``{"vtw_k": "auto"}`` to take it from the model's vtwctl calibration record (optionally
``"vtw_dataset"``, ``"vtw_eta"``, ``"vtw_model"`` (the record's model name) and
``"vtw_profile_dir"``). Without ``vtw_k`` the plugin's classes behave exactly like vLLM's own.
"""

from __future__ import annotations

from typing import Any

from ...errors import VTWError, check_k
from ...spec import AUTO, K

CONFIG_KEYS = ("vtw_k", "vtw_dataset", "vtw_eta", "vtw_model", "vtw_profile_dir")


def choose_record(model: str, dataset: str | None = None, eta: float | None = None,
                  profile_dir: str | None = None) -> dict[str, Any] | None:
    """The calibration record ``--k auto`` uses: the one rule of every command (``vtwctl.records.auto_k``)."""
    from ...records import auto_k

    return auto_k(model, dataset, profile_dir, eta=eta)


def parse_k(value: Any, num_layers: int) -> int | str | None:
    """``vtw_k`` as given in the config: None (off), "auto", or an int in 0..N (``vtwctl.spec.K``)."""
    k = K.parse(value, what="vtw_k")
    if k.auto or k.stock:
        return "auto" if k.auto else None
    check_k(k.layer, num_layers, what="vtw_k")
    return k.layer


def k_from_config(hf_config: Any, num_layers: int, default_model: str | None = None) -> int | None:
    """K from ``hf_config.vtw_k`` (resolving "auto" through the calibration records), or None."""
    k = parse_k(getattr(hf_config, "vtw_k", None), num_layers)
    if k != "auto":
        return k
    model = getattr(hf_config, "vtw_model", None) or default_model
    if not model:
        raise VTWError('vtw_k="auto" needs the model name of its calibration record: add "vtw_model"')
    eta = getattr(hf_config, "vtw_eta", None)
    found = AUTO.resolve(None, model, getattr(hf_config, "vtw_dataset", None), float(eta) if eta is not None else None,
                         getattr(hf_config, "vtw_profile_dir", None))
    if found is None:
        raise VTWError(f'vtw_k="auto": no calibration record for {model!r}; run vtwctl calibrate or give vtw_k')
    return parse_k(int(found.record["k"]), num_layers)


def refusals(*, prefix_caching: bool, pipeline_parallel: int, speculative: bool, kv_transfer: bool,
             sliding_window: int | None, max_model_len: int | None = None, hybrid_kv_off: bool = False,
             decode_context_parallel: int = 1, scheduler_ok: bool = True) -> list[str]:
    """Why VTW cannot run with these engine settings (empty when it can).

    ``sliding_window``: the smallest sliding window of the model's attention layers (None: none). It is
    refused only when ``max_model_len`` exceeds it: below that the window never binds."""
    from .kv_names import SCHEDULER

    out = []
    if prefix_caching:
        out.append("prefix caching is on (a block of the text-only KV cache holds the KV of text tokens that "
                   "depend on every token before them, images included, which vLLM's per-block hashes do not "
                   "cover): pass --no-enable-prefix-caching")
    if pipeline_parallel > 1:
        out.append(f"pipeline parallelism is on (size {pipeline_parallel}): "
                   "VTW needs all decoder layers in one process")
    if decode_context_parallel > 1:
        out.append(f"decode context parallelism is on (size {decode_context_parallel}): text ranks are not "
                   "sharded across ranks")
    if speculative:
        out.append("speculative decoding is on: draft tokens would be verified against text-rank KV it does not know")
    if kv_transfer:
        out.append("a KV transfer/offload connector is on: it would move text-rank KV as if it were stock KV")
    if hybrid_kv_off:
        out.append("the hybrid KV cache manager is off (--disable-hybrid-kv-cache-manager): layers >= K need a "
                   "KV-cache group of their own")
    if sliding_window and (max_model_len is None or max_model_len > sliding_window):
        out.append(f"the model uses sliding-window attention (a window of {sliding_window} tokens) and max_model_len "
                   f"({max_model_len}) exceeds it: layers >= K hold text tokens only, so a window counted in their "
                   "KV cache would reach further back than the model's window in original positions whenever vision "
                   f"tokens fall inside it; pass --max-model-len {sliding_window} or less (the window then never "
                   "binds and those layers are exactly full attention)")
    if not scheduler_ok:
        out.append(f"vLLM's scheduler is not vtwctl's: pass --scheduler-cls {SCHEDULER} (scheduler_cls= in "
                   "Python; vtwctl serve passes it), which tells the text-only KV cache where each request's "
                   "vision tokens are")
    return out
