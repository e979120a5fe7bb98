"""Running the installed ``vtwctl`` console script in a subprocess, as a user's shell does.

``script(...)`` starts the real console script (the venv's ``bin/vtwctl``; ``python -m vtwctl`` when
the package is not installed). ``batch([...])`` runs many command lines through the same entry
point (``vtwctl.cli.execute``, what the script calls) in *one* subprocess, for long lists of cheap
cases (errors raised before any model loads), so each case does not pay an interpreter start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

_BIN = Path(sys.executable).parent / ("vtwctl.exe" if os.name == "nt" else "vtwctl")
SCRIPT = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "vtwctl"]


def _env(extra: dict | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    extra = {k: str(v) for k, v in (extra or {}).items()}
    if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):  # keep the caller's (a source checkout)
        extra["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    env.update(extra)
    return env


def _default_sigint() -> None:  # a background test runner may ignore SIGINT; the child must not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _limited(limits: dict | None, umask: int | None):
    """A ``preexec_fn`` that sets resource limits (``{"RLIMIT_FSIZE": bytes, ...}``) and the umask in the child."""
    if not limits and umask is None:
        return None

    def setup() -> None:
        import resource

        for name, value in (limits or {}).items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if umask is not None:
            os.umask(umask)
    return setup


def script(*args, env: dict | None = None, timeout: float = 300, cwd=None, limits: dict | None = None,
           umask: int | None = None) -> subprocess.CompletedProcess:
    """Run ``vtwctl ARGS`` and wait for it (``limits``: resource limits of the child, e.g. ``RLIMIT_FSIZE``
    for a file size limit, ``RLIMIT_DATA`` so that a runaway read fails instead of filling the memory)."""
    return subprocess.run([*SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=_env(env), cwd=cwd, preexec_fn=_limited(limits, umask))


def start(*args, env: dict | None = None, stdout=None, stderr=None, cwd=None) -> subprocess.Popen:
    """Start ``vtwctl ARGS`` without waiting (for signals and concurrent runs)."""
    return subprocess.Popen([*SCRIPT, *map(str, args)], stdout=stdout or subprocess.PIPE,
                            stderr=stderr or subprocess.PIPE, text=True, env=_env(env), cwd=cwd,
                            preexec_fn=_default_sigint if os.name != "nt" else None)


_DRIVER = r"""
import contextlib, io, json, os, sys, traceback
try:
    from vtwctl.cli import execute
except ImportError:  # an older vtwctl (checking that a test fails without the fix): its entry point
    from vtwctl.cli import main

    def execute(argv):
        sys.argv = ["vtwctl", *argv]
        try:
            main()
            return 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:
            traceback.print_exc()
            return 1
out = []
for case in json.load(sys.stdin):
    saved = dict(os.environ)
    os.environ.update(case.get("env", {}))
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = execute(case["argv"])
    os.environ.clear()
    os.environ.update(saved)
    out.append([rc, o.getvalue(), e.getvalue()])
sys.__stdout__.write(json.dumps(out))
"""


def batch(cases: list, env: dict | None = None, timeout: float = 600,
          limits: dict | None = None) -> list[SimpleNamespace]:
    """Run each case (a list of arguments, or {"argv": [...], "env": {...}}) in one subprocess."""
    payload = [c if isinstance(c, dict) else {"argv": c} for c in cases]
    payload = [{"argv": [str(a) for a in c["argv"]], "env": {k: str(v) for k, v in c.get("env", {}).items()}}
               for c in payload]
    res = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(payload), capture_output=True,
                         text=True, timeout=timeout, env=_env(env), preexec_fn=_limited(limits, None))
    assert res.returncode == 0, res.stderr[-3000:]
    return [SimpleNamespace(returncode=rc, stdout=o, stderr=e) for rc, o, e in json.loads(res.stdout)]


def assert_one_line(res, message: str, code: int = 2) -> None:
    """Exit ``code``, exactly one line on stderr containing ``message``, no traceback."""
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == code, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
