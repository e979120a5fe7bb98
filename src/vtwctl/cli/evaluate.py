"""Old path of ``vtwctl.cli.dataset`` (``run --dataset``) and ``vtwctl.cli.merge`` (``merge``): their names."""

from .dataset import render, run_dataset
from .merge import merge_cmd

__all__ = ["render", "run_dataset", "merge_cmd"]
