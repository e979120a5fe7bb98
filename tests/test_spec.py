"""The one K type (``vtwctl.spec.K``) and the one ``auto`` rule: parsed alike everywhere, resolved alike by
run, profile, attention, lmms-eval and serve; argument errors are ValueErrors; a method that needs a K
is refused without one."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from console import assert_one_line, batch, script
from vtwctl import records
from vtwctl.errors import VTWError
from vtwctl.spec import AUTO, STOCK, K


def test_parse():
    assert K.parse("16") == K.parse(16) == K.parse(16.0) == K.parse(" 16 ") == K(16)
    assert K.parse("auto") == K.parse("AUTO") == AUTO and AUTO.auto and not AUTO.stock
    assert K.parse(None) == STOCK and STOCK.stock
    assert K.parse("none", stock_words=True) == K.parse("stock", stock_words=True) == STOCK
    assert K.parse_list("8, 12,16") == (K(8), K(12), K(16)) and K.parse_list("auto") == (AUTO,)
    for bad in ("sixteen", 2.5, True, [3], "none", "", "8,12"):
        with pytest.raises(ValueError, match="must be an integer"):
            K.parse(bad)
    with pytest.raises(ValueError, match="K=-1 is out of range"):
        K.parse(-1)
    for bad in ("4,x", "", "auto,3", "3,,4"):
        with pytest.raises(ValueError, match="comma-separated"):
            K.parse_list(bad)


def test_resolve_layers_and_stock():
    assert K(3).resolve(8).k == 3 and K(3).resolve(8).layer(8) == 3
    assert K(8).resolve(8).k is None and K(8).resolve(8).layer(8) == 8  # K = N is the stock model
    assert STOCK.resolve(8).k is None and K(0).resolve(8).k == 0
    with pytest.raises(ValueError, match="K=9 is out of range"):
        K(9).resolve(8)
    assert K(40).resolve(None).k == 40  # layers not known yet: no range check


def test_argument_errors_are_value_errors_and_vtw_errors():
    from vtwctl.engine.hooks import withdraw
    from vtwctl.errors import ArgumentError
    from vtwctl.testing import tiny_model

    model = tiny_model("llava")  # 6 decoder layers
    for k in (7, -1, "3"):
        with pytest.raises(ValueError) as err:
            with withdraw(model, k):
                pass
        assert isinstance(err.value, VTWError) and isinstance(err.value, ArgumentError)
    with pytest.raises(ValueError, match="positions"):
        with withdraw(model, 2, positions="shuffle"):
            pass


@pytest.fixture()
def user_store(tmp_path):
    """llava-1.5-7b with two user records; its shipped profile has sqa records (K=15 at its default
    eta 0.003, others at other etas) and a record for every task ("*", K=16)."""
    store = tmp_path / "store"
    records.save_record("llava-1.5-7b", {"dataset": "pope", "eta": 0.003, "k": 9, "date": "1"}, store)
    records.save_record("llava-1.5-7b", {"dataset": "sqa", "eta": 0.001, "k": 11, "date": "2"}, store)
    return store


def test_one_auto_rule_for_every_entry_point(user_store, tmp_path):
    from vtwctl.integrations.lmms_eval.args import parse_model_args, resolve_k
    from vtwctl.integrations.vllm.config import choose_record, k_from_config

    def lmms(task, **kw):
        return resolve_k(parse_model_args({"k": "auto", "profile_dir": str(user_store), **kw}), "llava-1.5-7b",
                         32, task)[0]

    class Config:
        vtw_k, vtw_model, vtw_profile_dir = "auto", "llava-1.5-7b", str(user_store)

    # no dataset: the user's newest record (serve took the shipped "*" record, K=16, once a user had calibrated)
    assert AUTO.resolve(32, "llava-1.5-7b", profile_dir=user_store).k == 11
    assert choose_record("llava-1.5-7b", profile_dir=str(user_store))["k"] == 11
    assert k_from_config(Config(), 32) == 11
    # a dataset: the user's record for it, else the shipped one for it, else the record for every task
    for dataset, task, want in (("pope", "pope", 9), ("sqa", "scienceqa_img", 11), ("mme", "mme", 16)):
        assert AUTO.resolve(32, "llava-1.5-7b", dataset, profile_dir=user_store).k == want
        assert choose_record("llava-1.5-7b", dataset, profile_dir=str(user_store))["k"] == want
        assert lmms(task) == want
    # an eta: only records calibrated at it (the user's sqa record is at 0.001: the shipped one at 0.003)
    assert choose_record("llava-1.5-7b", "sqa", 0.003, str(user_store))["k"] == 15
    assert lmms("scienceqa_img", eta=0.003) == 15
    # no user records: the shipped record at the profile's default eta
    empty = tmp_path / "empty"
    assert AUTO.resolve(32, "llava-1.5-7b", "sqa", profile_dir=empty).k == 15
    assert choose_record("llava-1.5-7b", "sqa", profile_dir=str(empty))["k"] == 15
    assert AUTO.resolve(32, "no/such-model", profile_dir=empty) is None


def test_serve_and_profile_take_the_same_record_as_run(user_store, tmp_path):
    env = {"HOME": tmp_path, "XDG_CACHE_HOME": tmp_path / "cache", "VTWCTL_PROFILE_DIR": tmp_path / "unused"}
    serve, prof = batch([["serve", "--model", "llava-1.5-7b", "--k", "auto", "--profile-dir", user_store,
                          "--print-command"],
                         ["profile", "--model", "llava-1.5-7b", "--flops-only", "--k", "auto", "--profile-dir",
                          user_store, "--json"]], env=env)
    assert serve.returncode == 0, serve.stderr
    assert json.loads(serve.stdout)["k"] == 11 and json.loads(serve.stdout)["record"]["dataset"] == "sqa"
    assert prof.returncode == 0, prof.stderr
    assert json.loads(prof.stdout)["k"] == 11


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vtwctl.testing import save_tiny_llava

    path = tmp_path_factory.mktemp("tiny-llava")
    save_tiny_llava(path)
    img = path / "red.png"
    Image.new("RGB", (48, 40), (255, 0, 0)).save(img)
    return path, img


@pytest.mark.parametrize("method", ["rand", "vtw-random"])
def test_a_method_that_needs_k_is_refused_without_one(tiny, tmp_path, method):
    """No --k and no calibration record: refused before the model loads (it ran the stock model and reported
    "rand"), as `run --dataset` refuses it."""
    model, img = tiny
    env = {"HOME": tmp_path, "XDG_CACHE_HOME": tmp_path / "cache", "VTWCTL_PROFILE_DIR": tmp_path / "store"}
    out = script("run", "--model", model, "--image", img, "--prompt", "what colour ?", "--method", method,
                 "--max-new-tokens", "2", "--json", env=env)
    assert_one_line(out, f"--method {method} needs a K")


def test_rand_with_a_k_runs_and_says_so(tiny, tmp_path):
    model, img = tiny
    env = {"HOME": tmp_path, "XDG_CACHE_HOME": tmp_path / "cache", "VTWCTL_PROFILE_DIR": tmp_path / "store"}
    out = script("run", "--model", model, "--image", img, "--prompt", "what colour ?", "--method", "rand",
                 "--k", "2", "--max-new-tokens", "2", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["method"], json.loads(out.stdout)["k"]) == ("rand", 2)


def test_run_spec_is_checked_once_when_built():
    from vtwctl.spec import Generation, RunSpec

    spec = RunSpec(k="16", method="VTW", generation=Generation(max_new_tokens=8))
    assert (spec.k, spec.method, spec.max_new_tokens) == (K(16), "vtw", 8)
    assert RunSpec(method="baseline", k=5).k == STOCK  # the stock model has no K
    assert RunSpec(method="fastv", k=5, fastv_k=3).k == STOCK  # FastV has its own layer
    assert RunSpec.of(None, k=3, max_new_tokens=4, do_sample=True, temperature=0.5).generation == Generation(
        max_new_tokens=4, do_sample=True, temperature=0.5)
    assert RunSpec.of(7).k == K(7) and RunSpec.of(None).k == STOCK  # shorthand: the K
    bad = [dict(positions="shift"), dict(prompt_style="x"), dict(image_mode="gray"), dict(scoring="strict"),
           dict(batch_size=0), dict(shard=(2, 2)), dict(fastv_ratio=1.5), dict(fastv_k=0), dict(method="fast"),
           dict(k="two"), dict(compiled=True, method="rand", k=2),
           dict(compiled=True, generation=Generation(do_sample=True))]
    for kw in bad:
        with pytest.raises(ValueError):
            RunSpec(**kw)
    for kw in (dict(max_new_tokens=0), dict(do_sample=True, temperature=0.0)):
        with pytest.raises(ValueError):
            RunSpec.of(None, **kw)
    with pytest.raises(ValueError, match="unknown run setting"):
        RunSpec.of(None, kk=3)


def test_generate_takes_a_spec_or_its_fields(demo_loaded):
    """The spec and the keyword form are one and the same run; K = N reports the stock model."""
    from vtwctl.infer import generate
    from vtwctl.spec import Generation, RunSpec

    x = demo_loaded.build_inputs("How many shapes are there?")
    a = generate(demo_loaded, x, RunSpec(k=3, generation=Generation(max_new_tokens=4)))
    b = generate(demo_loaded, x, k=3, max_new_tokens=4)
    assert a.tokens == b.tokens and a.k == b.k == 3 and a.method == "vtw"
    n = demo_loaded.num_layers
    assert generate(demo_loaded, x, k=n, max_new_tokens=2).method == "stock"
    with pytest.raises(ValueError, match="out of range"):
        generate(demo_loaded, x, k=n + 1, max_new_tokens=2)


def test_the_calibration_store_under_its_name_and_its_old_names(tmp_path):
    """--calibration-dir and $VTWCTL_CALIBRATION_DIR name the store; --profile-dir and $VTWCTL_PROFILE_DIR
    still work (the new variable wins over the old one)."""
    new, old = tmp_path / "new", tmp_path / "old"
    records.save_record("demo", {"dataset": "sqa", "eta": 0.003, "k": 5}, new)
    records.save_record("demo", {"dataset": "sqa", "eta": 0.003, "k": 3}, old)
    base = {"HOME": tmp_path, "XDG_CACHE_HOME": tmp_path / "cache"}
    args = ["profile", "--model", "demo", "--flops-only", "--k", "auto", "--json"]
    cases = [{"argv": [*args, "--calibration-dir", new], "env": base},
             {"argv": [*args, "--profile-dir", old], "env": base},
             {"argv": args, "env": {**base, "VTWCTL_CALIBRATION_DIR": new, "VTWCTL_PROFILE_DIR": old}},
             {"argv": args, "env": {**base, "VTWCTL_PROFILE_DIR": old}}]
    got = [json.loads(r.stdout)["k"] if r.returncode == 0 else r.stderr for r in batch(cases)]
    assert got == [5, 3, 5, 3]
    (tmp_path / "a-file").write_text("x")
    bad = batch([[*args, "--calibration-dir", tmp_path / "a-file"]], env=base)[0]
    assert_one_line(bad, f"calibration store {tmp_path / 'a-file'} (--calibration-dir) is a file")
