import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random LLaVA saved to disk once per session (6 layers, 16 vision tokens)."""
    from vtwctl.testing import save_tiny_llava

    path = tmp_path_factory.mktemp("tiny-llava-session")
    save_tiny_llava(path)
    return path


@pytest.fixture(scope="session")
def demo_loaded():
    """The shipped demo model, loaded once per session on the CPU."""
    from vtwctl import load

    return load("demo", device="cpu")
