"""The ``vtwctl`` command line: thin Typer commands over the library.

Commands parse options, call one library function and render its result: Rich tables and
progress on stderr, ``--json`` results on stdout. Heavy imports (torch, transformers) happen
inside the commands, so ``vtwctl --help`` is instant. A ``VTWError`` (bad input, missing file,
unknown model, K out of range) becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="vtwctl",
    help="Visual Tokens Withdrawal (VTW) for multimodal LLMs: inference, calibration and profiling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """Visual Tokens Withdrawal (VTW) for multimodal LLMs: inference, calibration and profiling."""
    if version:
        from .. import __version__

        typer.echo(__version__)
        raise typer.Exit()


def _register() -> None:
    from . import attention as _attention  # noqa: F401
    from . import bench_run as _bench_run  # noqa: F401
    from . import calibrate as _calibrate  # noqa: F401  (each module registers its commands)
    from . import data as _data  # noqa: F401
    from . import models as _models  # noqa: F401
    from . import profile as _profile  # noqa: F401
    from . import run as _run  # noqa: F401
    from . import serve as _serve  # noqa: F401


def main() -> None:
    """Console entry point."""
    from ..errors import VTWError

    _register()
    try:
        app(standalone_mode=False)
    except VTWError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # library validation (e.g. K out of range inside withdraw)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors come here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            sys.exit(1)
        raise
