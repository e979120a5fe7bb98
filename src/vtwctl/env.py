"""The environment captured with every result: versions, device, dtype, attention, threads."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def _git_hash() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(loaded=None) -> dict:
    import torch
    import transformers

    from . import __version__

    env = {
        "versions": {"vtwctl": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "git": _git_hash(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
    if loaded is not None:
        env.update(device=str(loaded.device), dtype=str(loaded.dtype).replace("torch.", ""),
                   attn_implementation=loaded.attn_implementation, model_source=loaded.source,
                   prompt_style=getattr(loaded, "prompt_style", "hf"))
    return env
