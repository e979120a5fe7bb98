import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

# Every user path the suite could read or write is a fresh one, for this process and every vtwctl it starts:
# the user's calibration store, Hugging Face caches, crash files and HOME never change what a test sees
# (a `vtwctl calibrate` the user ran does not move `--k auto`), and no test writes into them.
USER_PATHS = Path(tempfile.mkdtemp(prefix="vtwctl-tests-"))
atexit.register(shutil.rmtree, USER_PATHS, ignore_errors=True)
for _var in ("VTWCTL_CALIBRATION_DIR", "VTWCTL_PROFILE_DIR", "VTWCTL_DATA_DIR", "VTWCTL_DEBUG", "VTWCTL_PROGRESS_EVERY",
             "HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN_PATH",
             "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
    os.environ.pop(_var, None)
for _var, _sub in (("HOME", "home"), ("XDG_CACHE_HOME", "home/.cache"), ("HF_HOME", "home/.cache/huggingface")):
    os.environ[_var] = str(USER_PATHS / _sub)
    (USER_PATHS / _sub).mkdir(parents=True, exist_ok=True)

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
