"""The ``vtwctl`` command line: thin Typer commands over the library.

Commands parse options, call one library function and render its result: Rich tables and
progress on stderr, ``--json`` results on stdout. Heavy imports (torch, transformers) happen
inside the commands, so ``vtwctl --help`` is instant.

Exit status: 0 done; 2 bad input (a ``VTWError``: bad option, missing file, unknown model, K out of
range), a usage error or a problem of the environment (a full disk, a file size limit, a read-only
or unwritable place: an ``OSError`` that ``files.environment_error`` names), as one line on stderr;
1 a bug (any other exception): one line naming the file the traceback was saved to (``--debug``
prints it instead); 130 interrupted (SIGINT, Ctrl-C) and 143 terminated (SIGTERM, e.g. by SLURM),
after everything finished was written.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

app = typer.Typer(
    name="vtwctl",
    help="Visual Tokens Withdrawal (VTW) for multimodal LLMs: inference, calibration and profiling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False, "signal": None, "verbose": False}


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"vtwctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version, expose_value=True),
    debug: bool = typer.Option(False, "--debug", help="Print the traceback of an internal error."),
    verbose: bool = typer.Option(False, "--verbose",
                                 help="Let the libraries underneath (transformers, datasets, Pillow, pyarrow) print "
                                      "their own warnings and progress bars on stderr."),
) -> None:
    """Visual Tokens Withdrawal (VTW) for multimodal LLMs: inference, calibration and profiling."""
    _state["debug"] = _state["debug"] or debug
    _state["verbose"] = verbose
    if not verbose:
        _quiet()


def _quiet() -> None:
    """Keep stderr to vtwctl's own words: the libraries' warnings, log lines and progress bars off (they
    are read when those libraries are imported, which the commands do later)."""
    import logging
    import warnings

    for name, value in (("TRANSFORMERS_VERBOSITY", "critical"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                        ("DATASETS_VERBOSITY", "critical"), ("HF_HUB_VERBOSITY", "critical"),
                        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")  # vtwctl never warns through `warnings`: these are the libraries'
    # a library's log line without a handler of its own would reach Python's last-resort handler (stderr)
    root = logging.getLogger()
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())
    for name in ("transformers", "datasets", "huggingface_hub", "accelerate", "torch", "PIL", "pyarrow",
                 "fsspec", "filelock", "urllib3", "httpx", "kernels"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for mod, fn in (("datasets", "disable_progress_bars"), ("huggingface_hub.utils", "disable_progress_bars")):
        if mod.split(".")[0] in sys.modules:  # already imported (a test driving execute() in one process)
            try:
                getattr(__import__(mod, fromlist=[fn]), fn)()
            except (ImportError, AttributeError):
                pass


def _register() -> None:
    from . import attention as _attention  # noqa: F401
    from . import calibrate as _calibrate  # noqa: F401  (each module registers its commands)
    from . import data as _data  # noqa: F401
    from . import frontier as _frontier  # noqa: F401
    from . import merge as _merge  # noqa: F401
    from . import models as _models  # noqa: F401
    from . import profile as _profile  # noqa: F401
    from . import run as _run  # noqa: F401
    from . import serve as _serve  # noqa: F401


def _usage_errors() -> tuple[type, ...]:
    """The usage-error class of every click typer may run on: its vendored ``typer._click`` (0.2x)
    and the ``click`` package (older typer, or commands built on it)."""
    classes = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(name, fromlist=["ClickException"])
        except ImportError:
            continue
        classes.append(mod.ClickException)
    return tuple(classes)


def _aborts() -> tuple[type, ...]:
    classes = []
    for name in ("typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(name, fromlist=["Abort"])
        except ImportError:
            continue
        if hasattr(mod, "Abort"):
            classes.append(mod.Abort)
    return tuple(classes)


def _on_signal(signum, frame) -> None:
    """SIGTERM (and SIGINT) unwind like Ctrl-C, so every ``finally`` and finished write still runs."""
    _state["signal"] = signum
    raise KeyboardInterrupt


def _interrupted() -> int:
    signum = _state["signal"] or signal.SIGINT
    name = signal.Signals(signum).name
    print(f"interrupted by {name}", file=sys.stderr)
    return 128 + int(signum)


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _save_traceback(exc: BaseException) -> str | None:
    """Write the traceback of a bug (with the command line and versions) to a file; its path."""
    import datetime
    import tempfile
    import traceback

    from .. import __version__

    text = (f"vtwctl {__version__}, python {sys.version.split()[0]}\n"
            f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc)))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in (os.path.join(base, "vtwctl", "crashes"), tempfile.gettempdir()):
        path = os.path.join(folder, f"vtwctl-{stamp}-{os.getpid()}.txt")
        try:
            os.makedirs(folder, exist_ok=True)
            # UTF-8 whatever the locale; an undecodable argument (LC_ALL=C) is written as its escape
            with open(path, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return path
        except Exception:  # never fail while reporting a failure; try the next place
            import contextlib

            with contextlib.suppress(OSError):
                if os.path.exists(path) and os.path.getsize(path) == 0:
                    os.unlink(path)
            continue
    return None


def _bug(exc: BaseException) -> int:
    what = f"{type(exc).__name__}: {_one_line(exc)}" if str(exc).strip() else type(exc).__name__
    if _state["debug"] or os.environ.get("VTWCTL_DEBUG") not in (None, "", "0"):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        print(f"error: internal error (a bug in vtwctl, not your input): {what}", file=sys.stderr)
        return 1
    path = _save_traceback(exc)
    where = f"traceback saved to {path}" if path else "the traceback could not be saved"
    print(f"error: internal error (a bug in vtwctl, not your input): {what}; {where} "
          "(rerun with --debug to print it)", file=sys.stderr)
    return 1


def _usage(exc) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        # `vtwctl` or `vtwctl data` alone: the help (typer may have printed it while building the error)
        text = exc.format_message()
        if text.strip():
            typer.echo(text)
        return 0
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    print(f"error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 2) or 2)


def execute(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: sys.argv[1:]) and return its exit status."""
    from ..errors import VTWError

    _state["signal"] = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_signal)
    except ValueError:  # not the main thread: leave the signals alone
        previous = None
    try:
        _register()
        rc = app(args=argv, prog_name="vtwctl", standalone_mode=False)
        if _state["signal"] is not None or rc == 130:  # typer turns KeyboardInterrupt into Exit(130)
            return _interrupted()
        return rc if isinstance(rc, int) else 0
    except VTWError as exc:
        print(f"error: {_one_line(exc, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except _usage_errors() as exc:
        return _usage(exc)
    except _aborts():
        if _state["signal"] is not None:
            return _interrupted()
        print("aborted", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `vtwctl ... | head`: the reader left
        sys.stderr.close()
        return 141
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except OSError as exc:
        from ..files import environment_error

        what = environment_error(exc)
        if what is None:
            return _bug(exc)
        print(f"error: {_one_line(what, 1000)}", file=sys.stderr)
        return 2
    except Exception as exc:
        return _bug(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _safe_streams() -> None:
    """Under a locale that cannot encode every character (``LC_ALL=C`` with ``PYTHONUTF8=0``), write what it
    cannot as escapes instead of failing on an answer or a file name with an accent."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


def main() -> None:
    """Console entry point."""
    _safe_streams()
    sys.exit(execute())
