"""Old path of ``vtwctl.integrations.vllm.probe``: the same module object (``vtwctl._moved``);
``python -m vtwctl.serving.probe SPEC.json`` runs it."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("vtwctl.integrations.vllm.probe", run_name="__main__", alter_sys=True)
else:
    from vtwctl._moved import alias

    alias(__name__, "vtwctl.integrations.vllm.probe")
