"""The command line end to end, on a tiny LLaVA saved to disk (no downloads)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vtwctl.testing import save_tiny_llava


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava")
    save_tiny_llava(path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (48, 40), (255, 0, 0)).save(path)
    return path


def vtwctl(*args):
    """Run the CLI in this process (as the console script does) and capture its exit code and output."""
    import contextlib
    import io
    from types import SimpleNamespace

    from vtwctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["vtwctl", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_help_does_not_import_torch():
    code = ("import sys; from vtwctl.cli import app, _register; _register();\n"
            "from typer.testing import CliRunner; r = CliRunner().invoke(app, ['--help']);\n"
            "assert r.exit_code == 0, r.output; assert 'run' in r.output;\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_run_json_matches_library(tiny_dir, image):
    out = vtwctl("run", "--model", tiny_dir, "--image", image, "--prompt", "what colour is the circle ?",
                 "--k", "2", "--max-new-tokens", "5", "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert set(rec) >= {"model", "k", "answer", "num_vision_tokens", "num_text_tokens", "new_tokens",
                        "prefill_s", "decode_s", "total_s"}
    assert rec["k"] == 2 and rec["num_vision_tokens"] == 16
    assert rec["num_text_tokens"] > 5 and 1 <= rec["new_tokens"] <= 5
    # the same answer straight from the library, with the same engine
    from vtwctl import generate, load
    from vtwctl.media import read_image

    loaded = load(str(tiny_dir), device="cpu")
    inputs = loaded.build_inputs("what colour is the circle ?", images=[read_image(image)])
    gen = generate(loaded, inputs, k=2, max_new_tokens=5)
    assert gen.answers[0] == rec["answer"]


def test_run_no_withdraw_equals_k_n(tiny_dir, image):
    a = vtwctl("run", "--model", tiny_dir, "--image", image, "--prompt", "is there a red circle ?",
               "--no-withdraw", "--max-new-tokens", "4", "--json")
    b = vtwctl("run", "--model", tiny_dir, "--image", image, "--prompt", "is there a red circle ?",
               "--k", "6", "--max-new-tokens", "4", "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["answer"] == json.loads(b.stdout)["answer"]
    assert json.loads(a.stdout)["k"] == 6


@pytest.mark.parametrize("args,message", [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "llava-1.5-7b"], "not in the local cache and the hub cannot be reached"),
    (["--model", "some-org/some-model"], "not in the local cache and the hub cannot be reached"),
    (["--model", "/no/such/dir/"], "not found"),
    (["--image", "/no/such/image.png"], "image not found"),
    (["--k", "7"], "out of range"),
    (["--k", "-1"], "out of range"),
    (["--k", "seven"], "must be an integer"),
    (["--positions", "shuffle"], "keep or rearrange"),
    (["--device", "tpu"], "unknown device"),
    (["--dtype", "int3"], "unknown dtype"),
    (["--attn-implementation", "magic"], "unknown attention implementation"),
])
def test_bad_input_is_one_line_exit_2(tiny_dir, image, args, message):
    base = {"--model": str(tiny_dir), "--image": str(image)}
    for flag in ("--model", "--image"):
        if flag not in args:
            args = [flag, base[flag], *args]
    out = vtwctl("run", "--prompt", "hi", *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_image_and_long_prompt(tiny_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = vtwctl("run", "--model", tiny_dir, "--image", bad, "--prompt", "hi")
    assert out.returncode == 2 and "cannot read image" in out.stderr
    ok = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(ok)
    out = vtwctl("run", "--model", tiny_dir, "--image", ok, "--prompt", "red " * 5000)
    assert out.returncode == 2 and "prompt too long" in out.stderr, out.stderr


def test_video_on_image_only_family_is_refused(tiny_dir, image, tmp_path):
    import numpy as np

    frames = tmp_path / "clip.npy"
    np.save(frames, np.zeros((4, 32, 32, 3), dtype="uint8"))
    out = vtwctl("run", "--model", tiny_dir, "--video", frames, "--prompt", "hi")
    assert out.returncode == 2 and "does not take videos" in out.stderr


def test_models_lists_profiles():
    out = vtwctl("models", "--json")
    assert out.returncode == 0, out.stderr
    names = {p["name"] for p in json.loads(out.stdout)}
    assert {"llava-1.5-7b", "llava-1.5-13b", "llava-next-7b", "video-llava-7b", "qwen2-vl-7b",
            "qwen2.5-vl-7b", "llava-onevision-7b"} <= names


def test_library_load_builds_chat_template_inputs(tiny_dir, image):
    from vtwctl import load
    from vtwctl.media import read_image

    loaded = load(str(tiny_dir), device="cpu", dtype="float32", attn_implementation="eager")
    assert loaded.family == "llava" and loaded.num_layers == 6 and loaded.attn_implementation == "eager"
    text = loaded.prompt_text("what is this ?", images=1)
    assert text.startswith("USER: <image>\n") and text.endswith("ASSISTANT:")
    batch = loaded.build_inputs(["what is this ?", "how many shapes ?"], images=[read_image(image), None])
    lay = loaded.layout(batch["input_ids"], batch["attention_mask"])
    assert lay["num_vision_tokens"] == [16, 0]
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1, 0] == 0  # left padded
    assert batch["pixel_values"].dtype == torch.float32


def test_broken_local_directory_is_one_line(tmp_path):
    import json as _json

    (tmp_path / "config.json").write_text(_json.dumps({"model_type": "llava"}))
    out = vtwctl("run", "--model", tmp_path, "--prompt", "hi")
    assert out.returncode == 2 and "cannot load" in out.stderr and "Traceback" not in out.stderr, out.stderr
