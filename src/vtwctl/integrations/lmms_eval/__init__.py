"""vtwctl as a model inside lmms-eval (docs/lmms-eval.md).

- ``model``   the lmms-eval model ``vtw`` (entry point ``lmms_eval.models``; its class is built on first access)
- ``args``    its ``--model_args`` and requests in vtwctl's terms (no lmms-eval import needed)
- ``shapes``  the functions the demo task ``vtwctl_shapes`` (``data/lmms_tasks``) points at

Importing this package imports none of them, nor lmms-eval.
"""
