"""``vtwctl models``: the known short names and their dimensions (no weights needed)."""

from __future__ import annotations

import typer

from . import app
from .common import JSON, emit_json, stderr_console


@app.command()
def models(
    families: bool = typer.Option(False, "--families", help="List the model families the engine knows instead."),
    json_out: bool = JSON,
) -> None:
    """List the models known by short name (profiles/), with their dimensions and K records."""
    from .. import profiles

    if families:
        _families(json_out)
        return

    rows = [profiles.get(n) for n in profiles.names()]
    if json_out:
        emit_json(rows)
        return
    from rich.table import Table

    table = Table(title="known models")
    for col in ("name", "hub id", "family", "layers", "hidden", "heads/kv", "vision tokens", "K records"):
        table.add_column(col)
    for p in rows:
        t, v = p["text"], p["vision"]
        ks = sorted({r["k"] for r in p.get("calibrations", []) if r.get("k") is not None})
        table.add_row(p["name"], p.get("hub_id") or "(shipped)", p["family"], str(t["num_layers"]),
                      str(t["hidden_size"]), f"{t['num_heads']}/{t['num_kv_heads']}",
                      str(v.get("tokens_per_image")), ",".join(map(str, ks)) or "-")
    stderr_console().print(table)


def _families(json_out: bool) -> None:
    from ..families import known_families

    rows = known_families()
    if json_out:
        emit_json(rows)
        return
    from rich.table import Table

    table = Table(title="model families (others whose config names image/video token ids: generic, untested)")
    for col in ("family", "stock class", "status", "notes"):
        table.add_column(col)
    for r in rows:
        status = "refused" if r["refused"] else ("tested" if r["tested"] else "generic")
        notes = r["refused"] or ", ".join(n for n, on in (("M-RoPE", r["mrope"]), ("deepstack", r["deepstack"]),
                                                          (f"{r['blocks']} blocks", r["blocks"])) if on)
        table.add_row(r["family"], r["model_class"] or "AutoModelForImageTextToText", status, notes)
    stderr_console().print(table)
