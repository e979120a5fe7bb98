"""Old import paths of moved modules: each is the moved module itself (a ``sys.modules`` alias).

``alias(__name__, "vtwctl.engine.hooks")`` in the old module's file makes ``import vtwctl.withdraw`` give
the very module object ``vtwctl.engine.hooks``, so every class and function is the same object under
both names (``isinstance`` checks hold, a name resolved by its qualified path finds the same class, a
monkeypatch on either is seen by both). ``submodules`` are aliased too, for an old package whose
submodules are imported by name (``vtwctl.policies.vtw``): they are imported at once.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def alias(old: str, new: str, submodules: tuple[str, ...] = ()) -> ModuleType:
    """Bind ``sys.modules[old]`` (and ``old.<sub>`` for each of ``submodules``) to the module ``new``."""
    module = importlib.import_module(new)
    sys.modules[old] = module
    for sub in submodules:
        sys.modules[f"{old}.{sub}"] = importlib.import_module(f"{new}.{sub}")
    return module
