"""Hook blocks per model and thread: the engine's ``withdraw``/``apply`` blocks and a reducer's ``apply`` block.

A block's hooks act on the calls of the thread that opened it only (``on_thread``), so another thread's calls
of the same model pass through untouched; within one thread, blocks of one kind do not nest (``Blocks``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator

import torch


def on_thread(fn: Callable, thread: int) -> Callable:
    """``fn`` as a hook that acts on ``thread``'s calls only (another thread's call: the hook returns None, the
    module runs stock). While dynamo traces, the tracing thread is the block's: a compiled model inside a block
    is used from that thread."""

    @functools.wraps(fn)
    def hook(*args, **kwargs):
        if not torch.compiler.is_compiling() and threading.get_ident() != thread:
            return None
        return fn(*args, **kwargs)
    return hook


class Blocks:
    """The threads inside a block of one kind on each model (models held weakly)."""

    def __init__(self) -> None:
        self._of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def enter(self, model: torch.nn.Module, nested: str) -> Iterator[int]:
        """The calling thread inside a block on ``model`` (yields its id); a second block of this kind on the same
        model in the same thread is a ``RuntimeError`` saying ``nested``."""
        thread = threading.get_ident()
        with self._lock:
            inside = self._of.setdefault(model, set())
            if thread in inside:
                raise RuntimeError(nested)
            inside.add(thread)
        try:
            yield thread
        finally:
            with self._lock:
                inside.discard(thread)
