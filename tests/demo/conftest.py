"""Make ``vtwctl`` importable from a source checkout (src layout) when it is not installed."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # pragma: no cover - depends on how the tests are run
    import vtwctl  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
