"""The vtw model for lmms-eval, without lmms-eval: model_args, K per task, gen_kwargs, visuals,
batching, and the Runner on the demo model (its loglikelihood checked against generate's own scores).

The end-to-end runs through lmms-eval's evaluator are in test_lmms_eval_slow.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shipped import demo_k, profile
from vtwctl import records
from vtwctl.errors import VTWError
from vtwctl.integrations.lmms_eval.args import (
    apply_until,
    content_for,
    dataset_for_task,
    generation_settings,
    parse_model_args,
    plan_batches,
    resolve_k,
    split_visuals,
)
from vtwctl.spec import AUTO, STOCK, K

ROOT = Path(__file__).resolve().parents[1]


# -- model_args ------------------------------------------------------------------------------------
def test_model_args_values_as_lmms_eval_parses_them():
    # lmms-eval's simple_parse_args_string turns "16" into 16, "true" into True, "0.003" into 0.003
    o = parse_model_args({"pretrained": "llava-hf/llava-1.5-7b-hf", "k": 16, "batch_size": "4", "device": None,
                          "max_batch_size": None, "eta": 0.003, "trust_remote_code": True, "max_frames_num": 16})
    assert (o.pretrained, o.k, o.batch_size, o.device, o.eta, o.trust_remote_code, o.frames) == (
        "llava-hf/llava-1.5-7b-hf", K(16), 4, "auto", 0.003, True, 16)
    assert (o.method, o.positions, o.use_until, o.max_new_tokens) == ("vtw", "keep", True, 1024)
    assert parse_model_args({"k": "AUTO"}).k == AUTO
    assert parse_model_args({"k": "none"}).k == STOCK
    assert parse_model_args({"k": 0, "positions": "rearrange"}).positions == "rearrange"


def test_model_args_methods():
    assert parse_model_args({"method": "fastv"}).k == K(2)  # FastV's default layer
    fv = parse_model_args({"method": "fastv", "k": 3, "ratio": 0.75})
    assert (fv.k, fv.spec.fastv_ratio) == (K(3), 0.75)
    assert parse_model_args({"method": "baseline"}).k == STOCK
    dart = parse_model_args({"method": "dart"})
    assert (dart.k, dart.spec.dart_ratio, dart.spec.dart_pivots) == (K(2), 0.778, (4, 4))  # the authors' defaults
    assert dart.spec.method == "dart" and dart.spec.dart == (2, 0.778, (4, 4))
    dart = parse_model_args({"method": "dart", "k": 3, "ratio": 0.5, "pivots_image": 2, "pivots_text": 0})
    assert dart.spec.dart == (3, 0.5, (2, 0)) and dart.spec.fastv_ratio == 0.5
    assert resolve_k(dart, "m", 8, "mme") == (3, "DART at layer 3, ratio 0.5, pivots 2+0")


@pytest.mark.parametrize("args, words", [
    ({}, "say which K"),
    ({"k": "sixteen"}, "integer"),
    ({"k": -1}, "integer >= 0"),
    ({"k": 2.5}, "integer"),
    ({"k": 4, "kk": 1}, "unknown vtw model argument 'kk' (did you mean k?)"),
    ({"k": 4, "method": "fast"}, "method must be one of"),
    ({"method": "baseline", "k": 3}, "drop k"),
    ({"method": "fastv", "k": 0}, "integer >= 1"),
    ({"method": "fastv", "positions": "rearrange"}, "method=vtw only"),
    ({"method": "fastv", "ratio": 1.5}, "[0, 1]"),
    ({"method": "dart", "ratio": -0.1}, "dart.ratio must be in [0, 1]"),
    ({"method": "dart", "k": 0}, "integer >= 1"),
    ({"method": "dart", "pivots_image": 0, "pivots_text": 0}, "not both 0"),
    ({"method": "fastv", "pivots_text": 2}, "pivots_text: not a setting of method=fastv"),
    ({"method": "vtw", "k": 4, "ratio": 0.5}, "ratio: not a setting of method=vtw"),
    ({"method": "dart", "positions": "rearrange"}, "method=vtw only"),
    ({"k": 4, "positions": "shift"}, "keep or rearrange"),
    ({"k": 4, "batch_size": "auto"}, "batch_size=auto"),
    ({"k": 4, "batch_size": 0}, ">= 1"),
    ({"k": 4, "use_until": "maybe"}, "true or false"),
    ({"k": "auto", "eta": -1}, "positive"),
])
def test_model_args_errors(args, words):
    with pytest.raises(VTWError, match=None) as err:
        parse_model_args(args)
    assert words in str(err.value)


# -- K per task ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, dataset", [
    ("mme", "mme"), ("mme_cot", "mme"), ("mmerealworld", None), ("pope", "pope"), ("pope_adv", "pope"),
    ("scienceqa_img", "sqa"), ("ai2d", "ai2d"), ("mmmu_val", "mmmu"), ("mmbench_en_dev", "mmbench"),
    ("videomme", "videomme"), ("videomme_w_subtitle", "videomme"), ("vtwctl_shapes", "shapes"),
    ("textvqa_val", None), ("", None),
])
def test_dataset_for_task(task, dataset):
    assert dataset_for_task(task) == dataset


def test_k_auto_from_the_shipped_demo_record():
    expected = demo_k()
    k, src = resolve_k(parse_model_args({"k": "auto"}), "demo", 8, "vtwctl_shapes")
    assert k == expected and "shapes" in src
    with pytest.raises(VTWError, match="no calibration record of demo for lmms-eval task 'mme'"):
        resolve_k(parse_model_args({"k": "auto"}), "demo", 8, "mme")


def test_k_auto_per_task_with_fallback_and_eta(tmp_path):
    for rec in ({"dataset": "mme", "k": 5, "eta": 0.003}, {"dataset": "mme", "k": 9, "eta": 0.001},
                {"dataset": "*", "k": 7}, {"dataset": "pope", "k": None}):
        records.save_record("my-vlm", rec, tmp_path)
    opts = parse_model_args({"k": "auto", "profile_dir": str(tmp_path)})
    assert resolve_k(opts, "my-vlm", 12, "mme")[0] == 9  # the newest record for the task
    assert resolve_k(parse_model_args({"k": "auto", "profile_dir": str(tmp_path), "eta": 0.003}),
                     "my-vlm", 12, "mme")[0] == 5
    assert resolve_k(opts, "my-vlm", 12, "textvqa")[0] == 7  # no task record: the model-wide one
    assert resolve_k(opts, "my-vlm", 12, "pope")[0] == 7  # a record without K does not count
    forced = parse_model_args({"k": "auto", "profile_dir": str(tmp_path), "calibration": "mme", "eta": 0.003})
    assert resolve_k(forced, "my-vlm", 12, "pope")[0] == 5
    assert resolve_k(opts, "my-vlm", 7, "textvqa")[0] is None  # K = N: the stock model
    with pytest.raises(VTWError, match="out of range"):
        resolve_k(opts, "my-vlm", 6, "textvqa")


def test_k_given_or_stock():
    assert resolve_k(parse_model_args({"k": 3}), "m", 8, "mme") == (3, "k from model_args")
    assert resolve_k(parse_model_args({"k": 8}), "m", 8, "mme")[0] is None
    assert resolve_k(parse_model_args({"k": "none"}), "m", 8, "mme")[0] is None
    assert resolve_k(parse_model_args({"method": "baseline"}), "m", 8, "mme")[0] is None
    assert resolve_k(parse_model_args({"method": "fastv", "k": 8}), "m", 8, "mme")[0] == 8
    with pytest.raises(VTWError, match="K=9 is out of range"):
        resolve_k(parse_model_args({"k": 9}), "m", 8, "mme")
    with pytest.raises(VTWError, match="FastV k=9"):
        resolve_k(parse_model_args({"method": "fastv", "k": 9}), "m", 8, "mme")


# -- gen_kwargs --------------------------------------------------------------------------------------
def test_generation_settings_of_lmms_eval_tasks():
    mme = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
           "until": ["\n\n"]}  # mme.yaml after lmms-eval's TaskConfig adds the default stop string
    s = generation_settings(mme)
    assert (s.max_new_tokens, s.do_sample, s.top_p, s.until) == (16, False, None, ("\n\n",))
    s = generation_settings({"temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 3, "until": "###",
                             "stop_sequences": ["END"]}, default_max_new_tokens=64)
    assert (s.max_new_tokens, s.do_sample, s.temperature, s.top_p, s.top_k, s.seed, s.until) == (
        64, True, 0.7, 0.9, 20, 3, ("###", "END"))
    # a given temperature decides (lmms-eval's models): do_sample=true with temperature 0 is greedy
    assert generation_settings({"do_sample": True, "temperature": 0}).do_sample is False
    s = generation_settings({"do_sample": True})
    assert (s.do_sample, s.temperature) == (True, 1.0)
    assert generation_settings({"until": ["\n\n"]}, use_until=False).until == ()
    assert generation_settings({"image_aspect_ratio": "pad", "num_beams": 1}).max_new_tokens == 1024


@pytest.mark.parametrize("kw, words", [
    ({"num_beams": 4}, "beam search"),
    ({"repetition_penalty": 1.2}, "repetition_penalty"),
    ({"length_penalty": 2.0}, "length_penalty not supported"),
    ({"until": [1, 2]}, "list of strings"),
    ({"max_new_tokens": 0}, ">= 1"),
])
def test_generation_settings_refused(kw, words):
    with pytest.raises(VTWError) as err:
        generation_settings(kw)
    assert words in str(err.value)


def test_apply_until():
    assert apply_until("yes\n\nThe image shows", ["\n\n"]) == "yes"
    assert apply_until("B. red</s>C", ["</s>", "."]) == "B"
    assert apply_until("no stop here", ["", "###"]) == "no stop here"
    assert apply_until("\n\nleading", ["\n\n"]) == ""  # as lmms-eval's split(term)[0]


# -- visuals and prompts -----------------------------------------------------------------------------
def test_split_visuals(tmp_path):
    red, blue = Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("L", (5, 5), 40)
    path = tmp_path / "green.png"
    Image.new("RGB", (4, 4), (0, 255, 0)).save(path)
    frames = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    images, video = split_visuals([red, None, str(path), blue, np.zeros((3, 4, 3), np.uint8), frames], frames=4)
    assert [im.size for im in images] == [(8, 6), (4, 4), (5, 5), (4, 3)]
    assert all(im.mode == "RGB" for im in images) and images[1].getpixel((0, 0)) == (0, 255, 0)
    assert video.shape == (4, 2, 2, 3) and [int(f[0, 0, 0]) for f in video] == [0, 36, 72, 108]  # frames 0, 3, 6, 9
    import io

    buf = io.BytesIO()
    red.save(buf, format="PNG")
    assert split_visuals([{"bytes": buf.getvalue(), "path": None}])[0][0].getpixel((1, 1)) == (255, 0, 0)
    assert split_visuals(None) == ([], None)
    with pytest.raises(VTWError, match="audio"):
        split_visuals([{"array": np.zeros(10), "sampling_rate": 16000}])
    with pytest.raises(VTWError, match="at most one video"):
        split_visuals([frames, frames])
    with pytest.raises(VTWError, match="unsupported visual"):
        split_visuals([3.5])


def test_content_for():
    ctx = "What is in the image?\nAnswer with a word."
    assert content_for(ctx, 1) is ctx  # unchanged: the visuals go first, as in vtwctl run
    parts = content_for("Compare <image> with <image>: same colour?", 2)
    assert parts == [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": "with"},
                     {"type": "image"}, {"type": "text", "text": ": same colour?"}]
    assert content_for("<image>\nDescribe.", 2) == "Describe."  # markers that do not match the images go
    assert content_for("<image>", 1) == [{"type": "image"}, {"type": "text", "text": ""}]


def test_plan_batches():
    keys = [("mme", "test", {"t": 0}), ("pope", "test", {"t": 0}), ("mme", "test", {"t": 0}),
            ("mme", "test", {"t": 1}), ("mme", "test", {"t": 0}), ("pope", "test", {"t": 0})]
    assert plan_batches(keys, 2) == [[0, 2], [4], [1, 5], [3]]
    assert plan_batches(keys, 1) == [[0], [2], [4], [1], [5], [3]]


# -- the Runner on the demo model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    import vtwctl

    return vtwctl.load("demo", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def rows():
    from vtwctl.demo import shapes

    return shapes.generate("test", 6)


def _runner(demo, **args):
    from vtwctl.integrations.lmms_eval.model import Runner

    notes = []
    return Runner(parse_model_args({"pretrained": "demo", **args}), loaded=demo, warn=notes.append), notes


def _items(rows, task="vtwctl_shapes", **gen):
    from vtwctl.integrations.lmms_eval.model import Item

    kw = {"max_new_tokens": 4, "temperature": 0, "until": [], **gen}
    return [Item(r["question"], [r["image"]], task, kw, "test") for r in rows]


def _reference_answer(demo, question, image, k, steps):
    """Greedy answer of VTW at ``k`` (None: stock) by the masked reference (tests/reference.py: the stock
    model recomputed at every step with vision keys hidden from layers >= k; no vtwctl engine, no batching)."""
    import torch

    from reference import extend, reference_logits

    n = demo.num_layers
    cur = demo.build_inputs(question, images=[image])
    vision = cur["input_ids"] == demo.model.config.image_token_index
    eos = demo.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    new = []
    for _ in range(steps):
        logits = reference_logits(demo.model, cur, n if k is None else k, drop=vision)[:, -1]
        tok = logits.argmax(-1, keepdim=True)
        if int(tok) in eos:
            break
        new.append(int(tok))
        cur = extend(cur, tok)
        vision = torch.cat([vision, torch.zeros_like(tok, dtype=torch.bool)], 1)
    return demo.processor.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_runner_answers_as_the_masked_reference(demo, rows):
    """The Runner's batched answers (padded batches of 4) equal the independent masked reference's, row by
    row, with VTW at K=3 and for the stock model (k=none); and VTW changes some answer at K=0, so the
    comparison can fail."""
    for args, k in (({"k": 3}, 3), ({"k": "none"}, None)):
        runner, notes = _runner(demo, batch_size=4, **args)
        got = [a.text.strip() for a in runner.generate(_items(rows))]
        assert got == [_reference_answer(demo, r["question"], r["image"], k, 4) for r in rows]
        assert any("K=" in n for n in notes)
    stock = [_reference_answer(demo, r["question"], r["image"], None, 4) for r in rows]
    assert [_reference_answer(demo, r["question"], r["image"], 0, 4) for r in rows] != stock


def test_runner_refuses_a_video_for_an_image_only_model(demo):
    """The demo (LLaVA) takes images only: a video request is refused with the reason, not run."""
    from vtwctl.integrations.lmms_eval.model import Item

    assert not demo.takes_video
    runner, _ = _runner(demo, k=3)
    clip = np.zeros((4, 8, 8, 3), np.uint8)  # [T, H, W, 3]: a video
    with pytest.raises(VTWError, match="does not take videos"):
        runner.generate([Item("What happens?", [clip], "videomme", {"max_new_tokens": 2}, "test")])


def test_runner_orders_groups_and_cuts(demo, rows):
    """Mixed gen_kwargs come back in request order; max_new_tokens and stop strings apply per request."""
    runner, _ = _runner(demo, k=3, batch_size=3)
    free = runner.generate(_items(rows, max_new_tokens=12))
    mixed = _items(rows, max_new_tokens=12)
    mixed[1].gen_kwargs = {"max_new_tokens": 1, "temperature": 0}
    mixed[4].gen_kwargs = {"max_new_tokens": 12, "temperature": 0, "until": [free[4].text[1:3]]}
    got = runner.generate(mixed)
    assert [a.text for i, a in enumerate(got) if i not in (1, 4)] == [a.text for i, a in enumerate(free)
                                                                        if i not in (1, 4)]
    assert got[1].output_tokens == 1 and free[1].text.startswith(got[1].text)
    assert got[4].text == free[4].text[:1]


def test_runner_several_images_in_order(demo, rows):
    """Two images in one request: twice the demo's vision tokens, pixels in the request's order."""
    from vtwctl.integrations.lmms_eval.model import Item

    prof = profile("demo")
    per_image = prof["vision"]["tokens_per_image"]
    runner, _ = _runner(demo, k="none")
    kw = {"max_new_tokens": 3, "temperature": 0, "until": []}
    a, b = rows[0]["image"], rows[3]["image"]
    one = runner.generate([Item("Describe.", [a], "t", kw)])[0]
    two = runner.generate([Item("Describe.", [a, b], "t", kw), Item("Describe.", [b, a], "t", kw)])
    assert two[0].input_tokens == one.input_tokens + per_image == two[1].input_tokens
    assert runner.stats.vision_tokens == 5 * per_image
    prompts, images, videos = runner._prepare([Item("Describe.", [a, b], "t", kw), Item("One.", [b], "t", kw)])
    pixels = demo.build_inputs(prompts, images=images, videos=videos)["pixel_values"]
    alone = [demo.processor.image_processor(images=im, return_tensors="pt")["pixel_values"][0] for im in (a, b, b)]
    assert pixels.shape[0] == 3 and all(bool((pixels[i] == alone[i]).all()) for i in range(3))
    assert not bool((alone[0] == alone[1]).all())  # the two images differ, so the order is visible


def test_runner_long_request_fits_the_positions(demo, rows):
    runner, notes = _runner(demo, k=3)
    got = runner.generate(_items(rows[:1], max_new_tokens=5000))[0]  # the demo has 512 positions
    assert got.output_tokens <= 512 - got.input_tokens
    assert any("exceeds the model's 512 positions" in n for n in notes)


def test_runner_fastv_and_rearrange_limits(demo, rows):
    stock = [a.text for a in _runner(demo, method="baseline")[0].generate(_items(rows))]
    assert [a.text for a in _runner(demo, method="fastv", ratio=0.0)[0].generate(_items(rows))] == stock
    assert [a.text for a in _runner(demo, k=8, positions="rearrange")[0].generate(_items(rows))] == stock
    # positions=rearrange goes to vtwctl's engine (contiguous text positions): same as generate() there
    from vtwctl.infer import generate

    inputs = demo.build_inputs([r["question"] for r in rows[:2]], images=[r["image"] for r in rows[:2]])
    want = generate(demo, inputs, k=1, positions="rearrange", max_new_tokens=4).answers
    got = _runner(demo, k=1, positions="rearrange", batch_size=2)[0].generate(_items(rows[:2]))
    assert [a.text.strip() for a in got] == want


def test_runner_dart_equals_generate(demo, rows):
    from vtwctl.infer import generate

    inputs = demo.build_inputs([r["question"] for r in rows[:2]], images=[r["image"] for r in rows[:2]])
    runner = _runner(demo, method="dart", k=3, ratio=0.9, batch_size=2)[0]
    with runner._engine("mme") as engine:  # the answers may equal the stock model's: the policy runs
        assert repr(engine.policy) == "DART(k=3, ratio=0.9, pivots=(4, 4))"
    want = generate(demo, inputs, method="dart", dart_k=3, dart_ratio=0.9, max_new_tokens=4).answers
    got = runner.generate(_items(rows[:2]))
    assert [a.text.strip() for a in got] == want
    stock = [a.text for a in _runner(demo, method="baseline")[0].generate(_items(rows))]
    assert [a.text for a in _runner(demo, method="dart", ratio=0.0)[0].generate(_items(rows))] == stock


def test_runner_loglikelihood_equals_generate_scores(demo, rows):
    """The loss of the greedy continuation (mean NLL per token, lmms-eval's convention) == minus the
    mean of generate()'s own step log-probs under withdrawal (a KV-cache path, independent of the
    one-forward scoring), and it is greedy; a longer wrong continuation scores worse."""
    import torch

    from vtwctl.engine.hooks import withdraw
    from vtwctl.integrations.lmms_eval.model import Item

    runner, _ = _runner(demo, k=3)
    tok = demo.processor.tokenizer
    eos = demo.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    items, want = [], []
    for r in rows[:3]:
        inputs = demo.build_inputs(r["question"], images=[r["image"]])
        with withdraw(demo.model, 3), torch.inference_mode():
            out = demo.model.generate(**inputs, max_new_tokens=4, do_sample=False, output_scores=True,
                                      return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
        new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        cut = next((i for i, t in enumerate(new) if t in eos), len(new))
        steps = [float(torch.log_softmax(out.scores[i][0].float(), -1)[new[i]]) for i in range(cut)]
        want.append(-sum(steps) / len(steps))
        text = tok.decode(new[:cut])
        items += [Item(r["question"], [r["image"]], "t", continuation=text),
                  Item(r["question"], [r["image"]], "t", continuation=text + "zq")]
    got = _runner(demo, k=3, batch_size=4)[0].loglikelihood(items)
    for j, w in enumerate(want):
        (lp, greedy), (lp_wrong, greedy_wrong) = got[2 * j], got[2 * j + 1]
        assert lp == pytest.approx(w, abs=1e-4) and greedy
        assert lp_wrong > lp and not greedy_wrong
    assert runner.loglikelihood(items[:1])[0][0] == pytest.approx(want[0], abs=1e-4)  # batch of one, same


def test_runner_multi_round(demo, rows):
    """lmms-eval's multi-round protocol: each round's text comes from doc_to_text until terminal."""

    runner, _ = _runner(demo, k=3)
    seen = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        seen.append((round_idx, list(previous_output), previous_round_info))
        if round_idx == 3:
            return None, None, True, previous_output, None
        return [doc["image"]], doc["question"], False, previous_output, {"round": round_idx}

    item = _items(rows[:1])[0]
    out = runner.multi_round(item, rows[0], doc_to_text)
    assert len(out) == 3 and len({*out}) == 1  # the same question three times: the same answer
    assert [s[0] for s in seen] == [1, 2, 3] and seen[2][2] == {"round": 2} and len(seen[2][1]) == 3


# -- packaging: entry point, laziness, the shapes task -------------------------------------------------
def test_entry_point_and_lazy_import():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert eps.get("vtw") == "vtwctl.integrations.lmms_eval.model:manifests"
    code = ("import sys, vtwctl, vtwctl.integrations.lmms_eval.model, vtwctl.integrations.lmms_eval.shapes; "
            "print('lmms_eval' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_export_writes_the_lmms_eval_task(tmp_path):
    import shutil

    import yaml

    from vtwctl import tasks

    exe = shutil.which("vtwctl") or str(Path(sys.executable).with_name("vtwctl"))
    out = subprocess.run([exe, "data", "export", "shapes", str(tmp_path), "--train", "2", "--validation", "3",
                          "--test", "6", "--lmms-eval", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)["files"]
    assert str(tmp_path / "vtwctl_shapes.yaml") in files and (tmp_path / "test.parquet").exists()

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    cfg = yaml.load((tmp_path / "vtwctl_shapes.yaml").read_text(), Loader=Loader)
    shapes_task = tasks.get("shapes")
    assert cfg["task"] == "vtwctl_shapes" and cfg["test_split"] == shapes_task.test_split
    assert cfg["generation_kwargs"]["max_new_tokens"] == shapes_task.max_new_tokens
    assert cfg["dataset_kwargs"]["data_files"]["test"] == "test.parquet"
    import vtwctl.integrations.lmms_eval.shapes as mod

    for value in (cfg["doc_to_visual"], cfg["doc_to_text"], cfg["process_results"],
                  *(m["aggregation"] for m in cfg["metric_list"])):
        assert value[0] == "function" and callable(getattr(mod, value[1].rsplit(".", 1)[1]))


def test_shapes_process_results_and_metrics():
    from vtwctl.integrations.lmms_eval import shapes as m

    docs = [dict(id="a", format="mc", answer="B", chance=0.25), dict(id="b", format="mc", answer="C", chance=0.25),
            dict(id="c", format="yesno", answer="no", chance=0.5), dict(id="d", format="short", answer="red",
                                                                       chance=0.2)]
    outputs = [" (B) ", "D", "No.", "It is red"]  # lmms-eval passes the raw answer; the task strips it
    res = [m.process_results(d, [o]) for d, o in zip(docs, outputs)]
    assert [r["accuracy"]["correct"] for r in res] == [True, False, True, True]
    assert res[0]["accuracy"]["parsed"] == "(B)"
    items = [r["accuracy"] for r in res]
    assert m.accuracy(items) == 0.75 and m.accuracy_mc(items) == 0.5 and m.accuracy_yesno(items) == 1.0
    assert m.accuracy_short(items) == 1.0 and m.chance(items) == pytest.approx(0.3)
