"""Reducers: methods that cut the vision tokens *before* the language model.

A layer policy (``vtwctl.engine.policies``) withdraws tokens at a decoder layer K of an unchanged prompt;
a reducer instead makes the vision tower hand the language model fewer image features, and the prompt
carries as many image placeholder tokens as there are features. The language model then sees a shorter
sequence from layer 0, with contiguous positions, exactly as a model fed that many features would.

A reducer is a small class with:

* ``refusal(model) -> str | None``: why ``model`` cannot take it (None: it can);
* ``shrink(model, inputs) -> dict``: the processed inputs with each image's placeholder tokens cut to the
  reducer's count (padding re-applied on the rows' side; pixel inputs untouched);
* ``apply(model)``: a context manager whose hooks make the model's image features the reducer's tokens
  (removed on exit; the calls of other threads are untouched), so that
  ``with r.apply(model): model.generate(**r.shrink(model, inputs))`` runs the method;
* ``vision_tokens(vision) -> int``: how many vision tokens the language model sees per image, given the
  stock count ``vision``; ``DEFAULTS``: the settings of the authors' default configuration.

Reducers compose with the layer engine: ``with r.apply(model), withdraw(model, k):`` runs VTW over the
reduced sequence (``visionzip.visionzip_vtw``).

* ``VisionZip``  dominant tokens by the vision tower's attention plus a few merged contextual tokens
  (Yang et al., CVPR 2025; docs/methods.md).
"""

from __future__ import annotations

REGISTRY = {"visionzip": "vtwctl.engine.reducers.visionzip:VisionZip"}


def get(method: str) -> type:
    """The reducer class of ``method``, imported on first use."""
    import importlib

    module, _, attr = REGISTRY[method].partition(":")
    return getattr(importlib.import_module(module), attr)
