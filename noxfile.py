"""nox sessions: tests, lint, bench. Each installs the pinned CPU torch wheel first."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(name="tests-slow")
def tests_slow(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-q", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "scripts", "bench", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev]")
    session.run("python", "bench/run.py", *session.posargs)
