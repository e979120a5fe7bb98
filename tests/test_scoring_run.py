"""Benchmark runs as lmms-eval runs them: scoring modes in the records, generation lengths and stop
strings, every image of a sample, lazily decoded shards, data checked before the model loads, the
MMBench judge through an OpenAI-compatible endpoint, seeded calibration subsets."""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from PIL import Image

from tasks.conftest import image, write_parquet
from tasks.test_pope_mme import POPE_FEATURES, pope_rows
from test_cli import tiny_dir, vtwctl  # noqa: F401  (fixture)
from vtwctl import tasks
from vtwctl.errors import VTWError
from vtwctl.evaluate import evaluate, read_records, select
from vtwctl.tasks import Sample


@pytest.fixture(scope="module")
def loaded(tiny_dir):  # noqa: F811
    from vtwctl import load

    return load(str(tiny_dir), device="cpu")


@pytest.fixture
def pope_dir(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", pope_rows(), POPE_FEATURES)
    return tmp_path


def test_generation_lengths_are_lmms_evals():
    want = {"sqa": 16, "ai2d": 16, "mme": 16, "videomme": 16, "mmmu": 128, "pope": 128, "mmbench": 1024}
    assert {n: tasks.get(n).max_new_tokens for n in want} == want
    assert tasks.get("mmbench").until == ["ASSISTANT:"] and tasks.get("pope").until == []
    for name in ("sqa", "ai2d", "mmmu", "mmbench", "pope", "mme"):  # lmms-eval's new organisation first
        assert tasks.get(name).dataset_ids[0].startswith("lmms-lab-encoder/"), name
    assert tasks.get("videomme").dataset_ids[0] == "lmms-eval/Video-MME"
    from vtwctl.tasks import mmbench, sqa

    assert sqa._config("lmms-lab-encoder/ScienceQA") == "ScienceQA-IMG"
    assert mmbench._config("lmms-lab-encoder/MMBench") == "en"


def test_stop_strings_cut_the_answer(loaded):
    from vtwctl.infer import generate

    inputs = loaded.build_inputs("describe the picture", images=[Image.new("RGB", (30, 30), (0, 90, 200))])
    free = generate(loaded, inputs, k=None, max_new_tokens=12)
    words = free.answers[0].split()
    assert len(words) >= 4, free.answers[0]
    stop = words[2]
    cut = generate(loaded, inputs, k=None, max_new_tokens=12, stop=[stop])
    assert cut.answers[0] == free.answers[0].split(stop)[0].strip()
    assert cut.new_tokens[0] < free.new_tokens[0]


def test_every_image_of_a_sample_reaches_the_model(loaded):
    one = Sample(id="1", prompt="compare", answer="", images=[image((1, 2, 3), (20, 20))])
    two = Sample(id="2", prompt="compare", answer="", images=[image((1, 2, 3), (20, 20)), image((9, 9, 9), (20, 20))])
    n1 = loaded.layout(loaded.sample_inputs(one)["input_ids"])["num_vision_tokens"][0]
    n2 = loaded.layout(loaded.sample_inputs(two)["input_ids"])["num_vision_tokens"][0]
    assert n1 > 0 and n2 == 2 * n1
    batch = loaded.build_inputs(["a", "b", "c"], images=[two.images, None, one.images[0]])
    assert loaded.layout(batch["input_ids"], batch["attention_mask"])["num_vision_tokens"] == [2 * n1, 0, n1]


def test_records_say_how_they_were_scored(loaded, pope_dir, tmp_path):
    task = tasks.get("pope")
    out = tmp_path / "pope.jsonl"
    s = evaluate(loaded, task, 2, source=str(pope_dir), output=out, max_new_tokens=3)
    recs = read_records(out)
    assert s.scoring == "lmms-eval" and {r["scoring"] for r in recs} == {"lmms-eval"}
    assert all(r["parsed"] == r["answer"].lower().strip() for r in recs)  # POPE's lmms-eval rule, by hand
    assert [r["correct"] for r in recs] == [r["parsed"] == r["target"] for r in recs]
    with pytest.raises(VTWError, match="scoring='lmms-eval' \\(now 'lenient'\\)"):
        evaluate(loaded, task, 2, source=str(pope_dir), output=out, max_new_tokens=3, scoring="lenient")
    lenient = evaluate(loaded, task, 2, source=str(pope_dir), output=tmp_path / "l.jsonl", max_new_tokens=3,
                       scoring="lenient")
    assert lenient.scoring == "lenient"
    assert [r["answer"] for r in read_records(tmp_path / "l.jsonl")] == [r["answer"] for r in recs]


def test_a_shard_decodes_only_its_own_samples(pope_dir):
    task = tasks.get("pope")
    decoded = []
    counting = dataclasses.replace(task, doc_to_visual=lambda doc: decoded.append(doc["_row"]) or [doc["image"]])
    every = counting.open("test", str(pope_dir))
    assert len(every.ids) == 6 and decoded == []  # ids without decoding an image
    part = select(counting, "test", str(pope_dir), limit=5, shard=(1, 2))
    assert part.ids == [every.ids[1], every.ids[3]] and decoded == []
    assert [s.id for s in part] == part.ids and decoded == [1, 3]
    # a seeded random subset (calibration): reproducible, recorded by id, differs between seeds
    a, b = every.sample(3, seed=0).ids, every.sample(3, seed=1).ids
    assert a == every.sample(3, seed=0).ids and a != b and len(set(a)) == 3
    assert every.first(2).ids == every.ids[:2] and every.exclude(every.ids[:4]).ids == every.ids[4:]


def test_local_data_with_wrong_columns_is_one_line(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "question"} for r in pope_rows()]
    feats = {k: v for k, v in POPE_FEATURES.items() if k != "question"}
    path = write_parquet(tmp_path / "test.parquet", rows, feats)
    with pytest.raises(VTWError, match=r"test.parquet lacks the column question that pope reads") as err:
        tasks.get("pope").open("test", str(path))
    assert "\n" not in str(err.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "test.parquet").write_text("not parquet")
    with pytest.raises(VTWError, match="cannot read"):
        tasks.get("pope").open("test", str(tmp_path / "bad"))


def test_cli_checks_data_before_loading_the_model(tmp_path):
    # a model that is not cached here (loading it would fail): the data error must come first
    res = vtwctl("run", "--model", "llava-1.5-7b", "--dataset", "pope", "--data-dir", tmp_path / "nothing",
                 "--k", "2")
    assert res.returncode == 2 and "dataset path not found" in res.stderr
    res = vtwctl("run", "--dataset", "pope", "--k", "2", "--scoring", "strict")
    assert res.returncode == 2 and "--scoring must be one of lmms-eval, lenient" in res.stderr
    res = vtwctl("run", "--dataset", "pope", "--k", "2", "--judge-url", "http://localhost:1/v1")
    assert res.returncode == 2 and "mmbench" in res.stderr
    res = vtwctl("run", "--dataset", "mmbench", "--k", "2", "--judge-url", "localhost:1")
    assert res.returncode == 2 and "--judge-url must be an http(s) URL" in res.stderr


class _FakeJudge(BaseHTTPRequestHandler):
    replies: list = []
    prompts: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeJudge.prompts.append((self.path, self.headers.get("Authorization"), body))
        reply = _FakeJudge.replies.pop(0) if _FakeJudge.replies else "I am not sure."
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeJudge.replies, _FakeJudge.prompts = [], []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_mmbench_judge_through_an_openai_compatible_endpoint(judge_server, monkeypatch):
    from vtwctl.tasks.judge import OpenAIJudge

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    task = tasks.get("mmbench")
    doc = {"index": 5, "question": "What is shown?", "hint": "nan", "answer": "C", "A": "a dog", "B": "a cat",
           "C": "a bird", "D": "a fish", "category": "x", "L2-category": "y", "source": "s"}
    s = Sample(id="5", prompt=task.doc_to_text({**doc, "_row": 0}), answer="C", meta=task.doc_to_meta(doc))
    judge = OpenAIJudge(judge_server, "judge-1", sleep=0)
    # the rules decide when they can: no request
    assert task.process(s, "C", judge=judge) == {"parsed": "C", "correct": True, "judge": "rules"}
    assert _FakeJudge.prompts == []
    # rules find nothing ("It flies."): static rules read nothing, the judge reads C
    assert task.process(s, "It flies.")["parsed"] == ""
    _FakeJudge.replies = ["C"]
    got = task.process(s, "It flies.", judge=judge)
    assert got == {"parsed": "C", "correct": True, "judge": judge.name}
    path, auth, body = _FakeJudge.prompts[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "judge-1"
    prompt = body["messages"][0]["content"]
    assert prompt.endswith("Question: What is shown??\nOptions: There are several options: \nA. a dog\nB. a cat\n"
                           "C. a bird\nD. a fish\n\nAnswer: It flies.\nYour output: ")  # MMBench's template
    # three replies naming no option: a letter of A-E, the same for the same sample every time
    _FakeJudge.replies = ["hmm", "no idea", "can't say"]
    first = task.process(s, "It flies.", judge=judge)["parsed"]
    _FakeJudge.replies = ["hmm", "no idea", "can't say"]
    assert first in "ABCDE" and task.process(s, "It flies.", judge=judge)["parsed"] == first
    assert len(_FakeJudge.prompts) == 1 + 3 + 3


def test_calibration_draws_a_seeded_subset(loaded):
    from vtwctl.calibrate import calibrate

    task = tasks.get("shapes")
    a = calibrate(loaded, task, [0.003], k_min=1, samples=3, seed=0)
    b = calibrate(loaded, task, [0.003], k_min=1, samples=3, seed=1)
    again = calibrate(loaded, task, [0.003], k_min=1, samples=3, seed=0)
    assert a.sample_ids == again.sample_ids and a.sample_ids != b.sample_ids
    assert a.sample_ids != task.open("validation").first(3).ids  # not simply the first rows


def test_pope_parquet_with_image_sizes(tmp_path):
    """The parquet fixture round trip keeps images decodable lazily (a regression guard for ``open``)."""
    rows = [{**r, "image": image((5, 5, 5), (7, 9))} for r in pope_rows()]
    path = write_parquet(tmp_path / "test.parquet", rows, POPE_FEATURES)
    s = tasks.get("pope").open("test", str(path))[2]
    assert s.image.size == (7, 9) and s.images == [s.image]


def test_batched_calibration_gives_every_sample_its_own_kl(loaded):
    from vtwctl.calibrate import calibrate

    task = tasks.get("shapes")
    one = calibrate(loaded, task, [0.003], k_min=1, samples=5, seed=2, tokens=2)
    four = calibrate(loaded, task, [0.003], k_min=1, samples=5, seed=2, tokens=2, batch_size=4)
    assert one.sample_ids == four.sample_ids
    for k, values in one.kl_per_sample.items():
        assert four.kl_per_sample[k] == pytest.approx(values, rel=1e-4, abs=1e-6), k
