"""Names of the vLLM-side classes, importable without vLLM (``vtwctl serve`` and the refusals use them)."""

SCHEDULER = "vtwctl.integrations.vllm.kv.VTWScheduler"
