"""The demo benchmark "shapes" as an lmms-eval task: the functions its YAML points at.

``data/lmms_tasks/vtwctl_shapes.yaml`` (written next to the parquet files by
``vtwctl data export shapes DIR --lmms-eval``) names these with ``!function vtwctl.integrations.lmms_eval.shapes.*``.
Scoring is vtwctl's own: the answer is the stripped output (the task's parse) and
``shapes.score(format, parsed, answer)`` decides; the metrics are the ones ``vtwctl run --dataset
shapes`` reports (accuracy overall and per format, and the chance level).
"""

from __future__ import annotations

from pathlib import Path

TASK_NAME = "vtwctl_shapes"
FORMATS = ("mc", "yesno", "short")


def task_yaml() -> Path:
    """The shipped task YAML."""
    return Path(__file__).resolve().parents[2] / "data" / "lmms_tasks" / f"{TASK_NAME}.yaml"


def write_task(out_dir: str | Path) -> Path:
    """Copy the task YAML into ``out_dir`` (the directory of the exported parquet files)."""
    out = Path(out_dir) / f"{TASK_NAME}.yaml"
    out.write_text(task_yaml().read_text())
    return out


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def process_results(doc: dict, results: list[str]) -> dict:
    from ...demo import shapes

    parsed = results[0].strip()
    item = {"id": doc["id"], "format": doc["format"], "parsed": parsed, "chance": float(doc["chance"]),
            "correct": bool(shapes.score(doc["format"], parsed, doc["answer"]))}
    return {"accuracy": item, "chance": item, **{f"accuracy_{f}": item for f in FORMATS}}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def accuracy(items: list[dict]) -> float:
    return _mean([float(i["correct"]) for i in items])


def chance(items: list[dict]) -> float:
    return _mean([i["chance"] for i in items])


def _accuracy_of(fmt: str):
    def agg(items: list[dict]) -> float:
        return _mean([float(i["correct"]) for i in items if i["format"] == fmt])

    agg.__name__ = f"accuracy_{fmt}"
    return agg


accuracy_mc = _accuracy_of("mc")
accuracy_yesno = _accuracy_of("yesno")
accuracy_short = _accuracy_of("short")
