"""lmms-eval's own evaluator running the vtw model on the exported shapes benchmark (slow).

Needs lmms-eval (``nox -s tests-lmms``, or ``pip install -e ".[lmms]" && pip install --no-deps
lmms-eval==0.7.3``). The accuracy lmms-eval reports must equal ``vtwctl run --dataset shapes`` on the
same samples, answer by answer, at the calibrated K (``k=auto``) through lmms-eval's CLI and at a
K < N with batches through ``simple_evaluate``; loglikelihood requests (multiple_choice) follow
lmms-eval's loss convention (it takes the argmin).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shipped import demo_k

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 40
METRICS = ("accuracy", "accuracy_mc", "accuracy_yesno", "accuracy_short", "chance")


def _script(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


@pytest.fixture(scope="module")
def lmms_eval():
    try:
        import lmms_eval.evaluator  # noqa: F401
        from lmms_eval.models import get_model
    except ImportError as exc:
        pytest.skip(f"lmms-eval is not importable ({exc}); run `nox -s tests-lmms` or pip install -e '.[lmms]' "
                    "&& pip install --no-deps lmms-eval==0.7.3")
    assert get_model("vtw").__name__ == "VTW"  # registered through the entry point
    import lmms_eval as mod

    return mod


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    run = subprocess.run([_script("vtwctl"), "data", "export", "shapes", str(out), "--train", "6", "--validation", "12",
                          "--test", str(LIMIT), "--lmms-eval"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return out


def _env() -> dict:
    return {"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def vtwctl_run(data: Path, tmp: Path, *args: str) -> tuple[dict, list[dict]]:
    records = tmp / "records.jsonl"
    run = subprocess.run([_script("vtwctl"), "run", "--dataset", "shapes", "--data-dir", str(data), "--limit",
                          str(LIMIT), "--device", "cpu", "--json", "-o", str(records), *args],
                         capture_output=True, text=True, timeout=1800, env=_env())
    assert run.returncode == 0, run.stderr
    recs = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    return json.loads(run.stdout)["metrics"], recs


def _compare(results: dict, samples: list[dict], metrics: dict, records: list[dict]) -> None:
    for name in METRICS:
        assert results[f"{name},none"] == pytest.approx(metrics[name], abs=1e-9), name
    got = {s["accuracy"]["id"]: s["filtered_resps"].strip() if isinstance(s["filtered_resps"], str)
           else s["filtered_resps"][0].strip() for s in samples}
    want = {r["id"]: r["answer"] for r in records}
    assert len(got) == LIMIT and got == want


def test_cli_k_auto_equals_vtwctl_run(lmms_eval, data, tmp_path):
    k = demo_k()
    out = tmp_path / "lmms"
    run = subprocess.run([_script("lmms-eval"), "--model", "vtw", "--model_args", "pretrained=demo,k=auto,device=cpu",
                          "--tasks", "vtwctl_shapes", "--include_path", str(data), "--limit", str(LIMIT),
                          "--output_path", str(out), "--log_samples"],
                         capture_output=True, text=True, timeout=1800, env=_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"K={k} (calibration record of demo on shapes" in run.stdout + run.stderr
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]["vtwctl_shapes"]
    samples = [json.loads(line) for line in next(out.rglob("*_samples_vtwctl_shapes.jsonl")).read_text().splitlines()]
    metrics, records = vtwctl_run(data, tmp_path, "--k", "auto")
    assert {r["k"] for r in records} == {k}
    _compare(results, samples, metrics, records)


def test_simple_evaluate_k3_batched_equals_vtwctl_run(lmms_eval, data, tmp_path):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    res = simple_evaluate(model="vtw", model_args="pretrained=demo,k=3,device=cpu", tasks=["vtwctl_shapes"],
                          batch_size=4, limit=LIMIT, task_manager=TaskManager(include_path=str(data)),
                          log_samples=True, bootstrap_iters=0)
    metrics, records = vtwctl_run(data, tmp_path, "--k", "3", "--batch-size", "4")
    assert {r["k"] for r in records} == {3}
    _compare(res["results"]["vtwctl_shapes"], res["samples"]["vtwctl_shapes"], metrics, records)


MC_TASK = """\
task: vtwctl_mc
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: greedy.parquet
test_split: test
output_type: multiple_choice
doc_to_visual: !function vtwctl.integrations.lmms_eval.shapes.doc_to_visual
doc_to_text: !function vtwctl.integrations.lmms_eval.shapes.doc_to_text
doc_to_choice: ll_choices
doc_to_target: greedy
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_loglikelihood_requests(lmms_eval, data, tmp_path):
    """lmms-eval's multiple_choice (loglikelihood requests, argmin of the loss): the greedy answer
    (computed here by vtwctl at K=3) beats a wrong choice placed first, and is greedy (exact_match).
    (lmms-eval 0.7.3's plain ``output_type: loglikelihood`` fails in its own process_results for every
    model; no lmms-eval task uses it.)"""
    import datasets
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    import vtwctl
    from vtwctl.integrations.lmms_eval.args import parse_model_args
    from vtwctl.integrations.lmms_eval.model import Item, Runner

    ds = datasets.load_dataset("parquet", data_files={"test": str(data / "test.parquet")}, split="test")
    ds = ds.select(range(12))
    runner = Runner(parse_model_args({"pretrained": "demo", "k": 3}), loaded=vtwctl.load("demo", device="cpu"))
    items = [Item(r["question"], [r["image"]], "t", {"max_new_tokens": 4, "temperature": 0, "until": []}) for r in ds]
    greedy = [a.text for a in runner.generate(items)]
    ds = ds.add_column("greedy", greedy).add_column("ll_choices", [["zq" + g, g] for g in greedy])
    ds.to_parquet(str(tmp_path / "greedy.parquet"))
    (tmp_path / "mc.yaml").write_text(MC_TASK)
    res = simple_evaluate(model="vtw", model_args="pretrained=demo,k=3,device=cpu", tasks=["vtwctl_mc"],
                          batch_size=3, task_manager=TaskManager(include_path=str(tmp_path)), bootstrap_iters=0)
    assert res["results"]["vtwctl_mc"]["acc,none"] == 1.0
    assert res["results"]["vtwctl_mc"]["exact_match,none"] == 1.0
