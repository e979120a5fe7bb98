"""``vtwctl merge``: the shard files of one ``run --dataset`` -> one summary."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import JSON, stderr_console
from .dataset import render


@app.command("merge")
def merge_cmd(
    files: list[Path] = typer.Argument(..., help="Results files (JSONL) of the shards of one run."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the merged records here."),
    partial: bool = typer.Option(False, "--partial", help="Summarise the shards present even if some are missing."),
    json_out: bool = JSON,
) -> None:
    """Combine the shard files of one `run --dataset` into one summary."""
    from ..evaluate import merge

    summary = merge([str(f) for f in files], output, partial=partial)
    if summary.missing_shards:
        stderr_console().print(f"[yellow]partial: shard{'s' if len(summary.missing_shards) > 1 else ''} "
                               f"{', '.join(summary.missing_shards)} missing from this summary[/yellow]")
    render(summary, json_out)
