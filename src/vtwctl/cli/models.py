"""``vtwctl models``: the known short names, their dimensions and calibration records (no weights needed)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import CALIBRATION_DIR, JSON, emit_json, stdout_console


def _ks(recs: list[dict]) -> str:
    seen = []
    for r in recs:
        if r.get("k") is None:
            continue
        item = f"{r['k']} ({r.get('dataset')}" + (f", η={r['eta']:g})" if r.get("eta") is not None else ")")
        if item not in seen:
            seen.append(item)
    return ", ".join(seen) or "-"


@app.command()
def models(
    profile_dir: Path | None = CALIBRATION_DIR,
    families: bool = typer.Option(False, "--families", help="List the model families the engine knows instead."),
    json_out: bool = JSON,
) -> None:
    """List the models known by short name (profiles/) and every model of your calibration records,
    with dimensions and K records (shipped and yours)."""
    from .. import profiles, records

    if families:
        _families(json_out)
        return

    rows = []
    for n in profiles.names():
        prof = dict(profiles.get(n))
        prof["user_calibrations"] = records.user_records(n, profile_dir)
        rows.append(prof)
    for n in records.user_models(profile_dir):  # your records of models that are not shipped profiles
        if profiles.find(n) is None:
            rows.append({"name": n, "hub_id": None, "family": None, "text": None, "vision": None, "calibrations": [],
                         "user_calibrations": records.user_records(n, profile_dir)})
    if json_out:
        emit_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"known models (your records: {records.user_dir(profile_dir)})")
    for col in ("name", "hub id", "family", "layers", "hidden", "heads/kv", "vision tokens", "shipped K", "your K"):
        table.add_column(col)
    for p in rows:
        t, v = p.get("text") or {}, p.get("vision") or {}
        table.add_row(p["name"], p.get("hub_id") or ("(shipped)" if p.get("family") else "-"), p.get("family") or "-",
                      str(t.get("num_layers", "-")), str(t.get("hidden_size", "-")),
                      f"{t['num_heads']}/{t['num_kv_heads']}" if t else "-", str(v.get("tokens_per_image", "-")),
                      _ks(p.get("calibrations", [])), _ks(p["user_calibrations"]))
    stdout_console().print(table)


def _families(json_out: bool) -> None:
    from ..engine.families import known_families

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
    stdout_console().print(table)
