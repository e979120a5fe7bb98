"""The withdrawal engine: hooks on a stock transformers model, and what they rely on.

- ``hooks``     the hook class ``Engine`` and ``withdraw``/``apply``/``active`` (the public entry points)
- ``state``     what the hooks remember: the current call, and each KV cache's key slots (original indices)
- ``ops``       the tensor work for the layers >= K: masks, rotary tables and positions, deepstack, scatter
- ``plan``      pure tensor functions of the compressed layout (packing, key maps, masks, position shifts)
- ``policies``  which tokens leave where (VTW, VTW†, Rand, FastV, DART, PyramidDrop, SparseVLM), one file each
- ``registry``  every method's name, kind and declared settings
- ``reducers``  methods that cut vision tokens before the language model (VisionZip); they compose with ``hooks``
- ``support``   what the engine refuses, checked at entry and per call
- ``compat``    every transformers internal the engine reads
- ``families``  where the modules are in each model family
- ``blocks``    hook blocks per model and thread (hooks act on their own thread's calls; blocks do not nest)
- ``compiled``  the compiled fast path (greedy decoding over static buffers)

Importing this package imports none of them (nor torch); see docs/engine.md.
"""
