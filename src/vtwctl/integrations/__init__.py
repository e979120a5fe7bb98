"""vtwctl inside other programs: ``lmms_eval`` (a model and a task for lmms-eval) and ``vllm`` (a vLLM
plugin serving VTW). Importing this package, or either subpackage, imports neither program."""
