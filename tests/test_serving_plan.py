"""The vLLM plugin's parts that need no vLLM: text-rank plans (hand counts), K parsing, refusals,
``vtwctl serve`` checks through the console script, and lazy registration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from shipped import demo_k
from vtwctl.errors import VTWError
from vtwctl.integrations.vllm.config import parse_k, refusals
from vtwctl.integrations.vllm.plan import LedgerError, VisionLayout, VisionLedger, plan_step

BS = 4


def _table():
    # request 0 owns blocks 7, 2, 9; request 1 owns blocks 5, 1, 3, 8, 6, 4
    return torch.tensor([[7, 2, 9, 0, 0, 0], [5, 1, 3, 8, 6, 4]], dtype=torch.int32)


def _keys(table):
    return table[:, 0]


def test_prefill_and_decode_by_hand():
    ledger = VisionLedger()
    ledger.record(5, 20, 8)  # request 1: 20 tokens computed, 8 of them vision
    vision = torch.zeros(11, dtype=torch.bool)
    vision[2:6] = True  # request 0's tokens 2..5 are vision
    qsl = torch.tensor([0, 10, 11], dtype=torch.int32)
    lens = torch.tensor([10, 21], dtype=torch.int32)  # request 0: prefill 0..9; request 1: decode token 20
    plan = plan_step(qsl, lens, _keys(_table()), vision, ledger)
    assert plan.rows.tolist() == [0, 1, 6, 7, 8, 9, 10] and not plan.all_rows
    assert plan.text_ranks.tolist() == [0, 1, 2, 3, 4, 5, 12]  # token t -> t - V(t); 20 - 8 = 12
    assert plan.query_start_loc.tolist() == [0, 6, 7]
    assert plan.seq_lens.tolist() == [6, 13]
    assert plan.requests.tolist() == [0, 1]
    # rank c lives in block table[r, c // 4] at offset c % 4
    assert plan.slots(_table(), BS).tolist() == [28, 29, 30, 31, 8, 9, 8 * 4 + 0]  # request 1: rank 12 -> block 8
    # another text group: the same ranks in its own blocks
    other = torch.tensor([[11, 12, 13, 0, 0, 0], [21, 22, 23, 24, 25, 26]], dtype=torch.int32)
    assert plan.slots(other, BS).tolist() == [44, 45, 46, 47, 48, 49, 24 * 4]
    assert (plan.max_query_len, plan.max_seq_len) == (6, 13)
    assert ledger.entries == {7: (10, 4), 5: (21, 8)}


def test_chunks_split_an_image_and_a_chunk_without_text():
    ledger = VisionLedger()
    table = _table()[:1]
    # prompt: text 0..1, vision 2..9, text 10..12, cut into chunks [0, 4), [4, 8), [8, 13)
    full = torch.zeros(13, dtype=torch.bool)
    full[2:10] = True
    first = plan_step(torch.tensor([0, 4]), torch.tensor([4]), _keys(table), full[0:4], ledger)
    assert first.text_ranks.tolist() == [0, 1] and first.seq_lens.tolist() == [2]
    second = plan_step(torch.tensor([0, 4]), torch.tensor([8]), _keys(table), full[4:8], ledger)
    assert second.num_rows == 0 and second.requests.numel() == 0  # vision only: layers >= K skip it
    third = plan_step(torch.tensor([0, 5]), torch.tensor([13]), _keys(table), full[8:13], ledger)
    assert third.rows.tolist() == [2, 3, 4]
    assert third.text_ranks.tolist() == [2, 3, 4]
    assert third.seq_lens.tolist() == [5]
    assert third.slots(table, BS).tolist() == [30, 31, 8]
    decode = plan_step(torch.tensor([0, 1]), torch.tensor([14]), _keys(table), None, ledger)
    assert decode.text_ranks.tolist() == [5] and decode.seq_lens.tolist() == [6] and decode.all_rows


def test_steps_without_vision_rows_keep_every_row():
    """Decode rows, a prompt's text after its image and an empty (padding) request in one step."""
    ledger = VisionLedger()
    ledger.record(7, 12, 8)  # request 0: 12 tokens, 8 vision
    ledger.record(9, 6, 0)  # request 2: text only so far
    table = torch.tensor([[7, 1], [3, 0], [9, 2]], dtype=torch.int32)
    qsl = torch.tensor([0, 3, 3, 4])  # request 0: tokens 12..14; request 1: nothing; request 2: token 6
    plan = plan_step(qsl, torch.tensor([15, 0, 7]), table[:, 0], None, ledger)
    assert plan.all_rows and plan.rows.tolist() == [0, 1, 2, 3]
    assert plan.text_ranks.tolist() == [4, 5, 6, 6]
    assert plan.seq_lens.tolist() == [7, 7] and plan.requests.tolist() == [0, 2]
    assert plan.query_start_loc.tolist() == [0, 3, 4]
    # ranks 4..6 of request 0 in its second block (1); rank 6 of request 2 in its second block (2)
    assert plan.slots(table, 4).tolist() == [4, 5, 6, 10]
    assert ledger.entries == {7: (15, 8), 9: (7, 0)}


def test_padding_rows_are_not_text():
    ledger = VisionLedger()
    plan = plan_step(torch.tensor([0, 3]), torch.tensor([3]), _keys(_table()[:1]), torch.zeros(8, dtype=torch.bool),
                     ledger)
    assert plan.rows.tolist() == [0, 1, 2]


def test_ledger_refuses_unknown_or_out_of_step_requests():
    ledger = VisionLedger()
    keys = _keys(_table()[:1])
    with pytest.raises(LedgerError, match="no vision count"):
        plan_step(torch.tensor([0, 1]), torch.tensor([9]), keys, None, ledger)
    ledger.record(7, 9, 2)
    with pytest.raises(LedgerError, match="previous step ended at token 9"):
        plan_step(torch.tensor([0, 1]), torch.tensor([12]), keys, torch.zeros(1, dtype=torch.bool), ledger)
    # a request starting at token 0 (new, or recomputed after preemption) resets its entry
    plan_step(torch.tensor([0, 2]), torch.tensor([2]), keys, torch.tensor([True, False]), ledger)
    assert ledger.entries[7] == (2, 1)


def test_vision_layout_counts_text_tokens_by_hand():
    # LLaVA-NeXT-like: an image placeholder of 6 positions at 3 whose 4th is not embedded (a text token inside
    # the placeholder), and a second item (all embedded) of 2 at 12
    layout = VisionLayout.from_placeholders([(3, 6, [1, 1, 1, 0, 1, 1]), (12, 2, None)])
    assert (layout.starts, layout.ends) == ((3, 7, 12), (6, 9, 14))
    vision = [layout.vision_before(n) for n in range(16)]
    assert vision == [0, 0, 0, 0, 1, 2, 3, 3, 4, 5, 5, 5, 5, 6, 7, 7]
    assert [layout.text_tokens(n) for n in (0, 3, 9, 16)] == [0, 3, 4, 9]
    assert VisionLayout.from_placeholders([]).text_tokens(5) == 5


def test_parse_k():
    assert parse_k(None, 8) is None
    assert parse_k("auto", 8) == "auto"
    assert parse_k(3, 8) == 3 and parse_k("5", 8) == 5 and parse_k(8.0, 8) == 8
    for bad in (9, -1, "x", 2.5, True, [3]):
        with pytest.raises(VTWError):
            parse_k(bad, 8)


def test_refusals_name_each_problem():
    ok = dict(prefix_caching=False, pipeline_parallel=1, speculative=False, kv_transfer=False, sliding_window=None)
    assert refusals(**ok) == []
    assert refusals(**dict(ok, sliding_window=256, max_model_len=256)) == []  # the window never binds
    (window,) = refusals(**dict(ok, sliding_window=128, max_model_len=256))
    assert "sliding-window attention (a window of 128 tokens) and max_model_len (256) exceeds it" in window
    assert "--max-model-len 128 or less" in window
    got = refusals(**dict(ok, prefix_caching=True, pipeline_parallel=2, speculative=True, hybrid_kv_off=True,
                          scheduler_ok=False))
    text = " | ".join(got)
    assert len(got) == 5
    for word in ("prefix caching", "pipeline parallelism", "speculative decoding", "hybrid KV cache manager",
                 "--scheduler-cls vtwctl.integrations.vllm.kv.VTWScheduler"):
        assert word in text


def _cli(*args, env=None):
    exe = shutil.which("vtwctl") or os.path.join(os.path.dirname(sys.executable), "vtwctl")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_serve_builds_the_vllm_command(tmp_path):
    out = _cli("serve", "--model", "demo", "--k", "auto", "--port", "8011", "--print-command",
               env={"VTWCTL_PROFILE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    cmd = json.loads(out.stdout)
    assert cmd["k"] == demo_k() and cmd["record"]["dataset"] == "shapes"  # the demo model's shipped record
    argv = cmd["argv"]
    assert json.loads(argv[argv.index("--hf-overrides") + 1]) == {"vtw_k": demo_k()}
    assert "--no-enable-prefix-caching" in argv and argv[-2:] == ["--port", "8011"]


def _argv(*args, env=None):
    out = _cli("serve", *args, "--print-command", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _flag(argv, name):
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_serve_adds_what_vtw_needs_and_safe_defaults():
    argv = _argv("--model", "demo", "--k", "3")["argv"]
    assert _flag(argv, "--scheduler-cls") == ["vtwctl.integrations.vllm.kv.VTWScheduler"]
    assert _flag(argv, "--host") == ["127.0.0.1"]  # loopback unless the user says otherwise
    assert _flag(argv, "--shutdown-timeout") == ["30"] and _flag(argv, "--mm-processor-cache-gb") == ["0"]
    given = _argv("--model", "demo", "--k", "3", "--host", "0.0.0.0", "--shutdown-timeout", "5",
                  "--tensor-parallel-size", "2", "--max-text-len", "64")["argv"]
    assert _flag(given, "--host") == ["0.0.0.0"] and _flag(given, "--shutdown-timeout") == ["5"]
    assert _flag(given, "--tensor-parallel-size") == ["2"]  # tensor parallelism is not refused
    assert json.loads(_flag(given, "--hf-overrides")[0]) == {"vtw_k": 3, "vtw_max_text_len": 64}


def test_serve_k_equal_n_is_the_stock_model():
    """K = N: no vtw_k (vLLM's own class), no scheduler, any option, any architecture."""
    cmd = _argv("--model", "demo", "--k", "8", "--tensor-parallel-size", "2", "--enable-prefix-caching")
    assert cmd["stock"] and cmd["k"] == 8
    argv = cmd["argv"]
    assert "--hf-overrides" not in argv and "--scheduler-cls" not in argv and "--no-enable-prefix-caching" not in argv
    assert _cli("serve", "--model", "video-llava-7b", "--k", "32", "--print-command").returncode == 0


def test_serve_refuses_another_scheduler():
    out = _cli("serve", "--model", "demo", "--k", "3", "--scheduler-cls", "my.Scheduler", "--print-command")
    assert out.returncode == 2 and "needs vtwctl's scheduler" in out.stderr


def test_served_chat_template_tokenizes_like_vtwctl_run():
    """vLLM's chat endpoint renders the chat template and tokenizes it without special tokens; vtwctl run
    tokenizes the rendered template with them (a leading <s> on the demo). The template vtwctl serve passes
    gives vLLM's way the same ids as vtwctl's (the default chat request and vtwctl run see one prompt)."""
    import vtwctl
    from vtwctl.cli.serve import served_chat_template
    from vtwctl.demo import MODEL_DIR, shapes

    template = served_chat_template(str(MODEL_DIR))
    assert template is not None and template.startswith("{{ bos_token }}")
    loaded = vtwctl.load("demo", device="cpu", dtype="float32")
    sample = shapes.make_sample("test", 0)
    ours = loaded.build_inputs(sample["question"], images=[sample["image"]])["input_ids"][0].tolist()
    tok = loaded.processor.tokenizer
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample["question"]}]}]
    text = loaded.processor.apply_chat_template(conv, chat_template=template, add_generation_prompt=True,
                                                tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    image = tok.convert_tokens_to_ids("<image>")
    expanded = [t for t in ours if t != image]  # the processor expands <image> to the vision tokens
    assert [t for t in ids if t != image] == expanded and ids[0] == tok.bos_token_id
    assert served_chat_template(str(MODEL_DIR / "missing")) is None


@pytest.mark.parametrize("args, words", [
    (["--k", "3", "--enable-prefix-caching"], "prefix caching"),
    (["--k", "3", "--pipeline-parallel-size", "2"], "pipeline parallelism"),
    (["--k", "3", "--speculative-config", '{"method": "ngram"}'], "speculative decoding"),
    (["--k", "99"], "out of range"),
    (["--k", "3", "--hf-overrides", '{"vtw_k": 4}'], "give K with --k only"),
])
def test_serve_refuses_before_loading(args, words):
    out = _cli("serve", "--model", "demo", *args, "--print-command")
    assert out.returncode == 2
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("model", ["qwen2-vl-7b", "qwen2.5-vl-7b", "llava-next-7b", "llava-onevision-7b",
                                   "llava-1.5-7b"])
def test_serve_takes_the_verified_families(model):
    out = _cli("serve", "--model", model, "--k", "3", "--print-command")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["k"] == 3


@pytest.mark.parametrize("model, arch", [("video-llava-7b", "VideoLlavaForConditionalGeneration")])
def test_serve_refuses_unverified_families(model, arch):
    out = _cli("serve", "--model", model, "--k", "3", "--print-command")
    assert out.returncode == 2
    assert f"{model} is {arch}, on which VTW is not verified in vLLM" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_serve_reads_a_local_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForConditionalGeneration"],
                                                      "text_config": {"num_hidden_layers": 4}}))
    out = _cli("serve", "--model", str(tmp_path), "--k", "2", "--print-command")
    assert out.returncode == 2 and "Gemma3ForConditionalGeneration, on which VTW is not verified" in out.stderr
    assert "image tokens attend to each other bidirectionally" in out.stderr  # the reason it was refused for
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2VLForConditionalGeneration"],
                                                      "text_config": {"num_hidden_layers": 4}}))
    assert _cli("serve", "--model", str(tmp_path), "--k", "4", "--print-command").returncode == 0
    out = _cli("serve", "--model", str(tmp_path), "--k", "5", "--print-command")
    assert out.returncode == 2 and "out of range" in out.stderr


def test_k_range_of_a_hub_model_comes_from_its_profile():
    out = _cli("serve", "--model", "llava-1.5-7b", "--k", "33", "--print-command",
               env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and "out of range" in out.stderr  # 32 decoder layers


def test_importing_vtwctl_never_imports_vllm():
    code = ("import sys, vtwctl, vtwctl.integrations.vllm, vtwctl.integrations.vllm.config, "
            "vtwctl.integrations.vllm.plan, vtwctl.integrations.vllm.kv_names, vtwctl.cli.serve, "
            "vtwctl.serving, vtwctl.serving.config, vtwctl.serving.plan; "
            "assert not any(m == 'vllm' or m.startswith('vllm.') for m in sys.modules), 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plugin_entry_point_is_declared():
    from importlib.metadata import entry_points

    found = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert found.get("vtwctl") == "vtwctl.integrations.vllm:register"


def test_servable_fixtures_load_back_with_their_own_config(tmp_path):
    """The vLLM tests' tiny checkpoints (vtwctl.testing.checkpoints) reload with stock transformers: weights and
    config agree (head_dim 32, as vLLM's CPU attention needs). A merge once left the config saying 32 while
    the weights were built with 16, which only the slow vLLM tests saw."""
    import transformers as tf

    from vtwctl.testing.checkpoints import save_tiny

    for family in ("llava", "llava_next"):  # (the Qwen processors need torchvision: the vLLM venv only)
        path = save_tiny(family, tmp_path / family, num_layers=2)
        arch = json.loads((path / "config.json").read_text())["architectures"][0]
        model = getattr(tf, arch).from_pretrained(path)
        attn = model.model.language_model.layers[0].self_attn
        assert model.config.text_config.head_dim == 32
        assert attn.q_proj.out_features == model.config.text_config.num_attention_heads * 32
