"""``vtwctl data export``: write a benchmark to parquet files for inspection and reuse."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import JSON, emit_json, stderr_console

data_app = typer.Typer(help="Benchmark data: export the demo benchmark.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("export")
def export(
    dataset: str = typer.Argument("shapes", help="Dataset to export (the generated demo benchmark: shapes)."),
    out_dir: Path = typer.Argument(..., help="Directory for {train,validation,test}.parquet."),
    seed: int = typer.Option(0, "--seed"),
    train: int | None = typer.Option(None, "--train", min=0, help="Train samples (default: the generator's)."),
    validation: int | None = typer.Option(None, "--validation", min=0),
    test: int | None = typer.Option(None, "--test", min=0),
    lmms_eval: bool = typer.Option(False, "--lmms-eval",
                                   help="Also write the lmms-eval task vtwctl_shapes.yaml (use --include_path DIR)."),
    json_out: bool = JSON,
) -> None:
    """Write the generated demo benchmark as parquet files (one per split)."""
    from ..errors import VTWError

    if dataset != "shapes":
        raise VTWError(f"only the generated demo benchmark 'shapes' can be exported, not {dataset!r}; "
                       "the other tasks load from the hub cache or --data-dir")
    from ..demo import shapes
    from ..files import check_dir_target, check_file_target

    check_dir_target(out_dir, "output directory")
    for split in ("train", "validation", "test"):
        check_file_target(Path(out_dir) / f"{split}.parquet", "parquet file")
    paths = shapes.export(out_dir, seed=seed, n_train=train, n_validation=validation, n_test=test)
    if lmms_eval:
        from ..integrations.lmms_eval.shapes import write_task

        paths.append(write_task(out_dir))
    if json_out:
        emit_json({"dataset": dataset, "files": [str(p) for p in paths]})
        return
    stderr_console().print("wrote " + ", ".join(str(p) for p in paths), soft_wrap=True, highlight=False, markup=False)
