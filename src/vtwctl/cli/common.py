"""Options shared by every command that loads a model, and small rendering helpers."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

MODEL = typer.Option("demo", "--model", "-m",
                     help="Short name from profiles/ (llava-1.5-7b, demo, ...), a hub id, or a local directory.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps, or map (spread over all GPUs).")
DTYPE = typer.Option("auto", "--dtype", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16.")
ATTN = typer.Option(None, "--attn-implementation", help="eager, sdpa or flash_attention_2 (default: transformers').")
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text.")
TRUST = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub (off by default).")


def stderr_console():
    from rich.console import Console

    # a terminal gets its own width; logs and pipes get room for the wide tables
    return Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


def load_model(model: str, device: str, dtype: str, attn: str | None, trust_remote_code: bool = False):
    """Load through the core with a status spinner on stderr."""
    import transformers

    from ..loading import load

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    console = stderr_console()
    with console.status(f"loading {model}", spinner="dots"):
        return load(model, device=device, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code)


def parse_k(value: str | None, no_withdraw: bool, num_layers: int) -> int | str | None:
    """``--k`` as an int, 'auto', or None (no withdrawal)."""
    from ..errors import VTWError, check_k

    if no_withdraw:
        if value not in (None, "auto"):
            raise VTWError("--k and --no-withdraw contradict each other")
        return None
    if value is None or value == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        raise VTWError(f"--k must be an integer in 0..{num_layers} or 'auto', got {value!r}") from None
    check_k(k, num_layers)
    return k
