"""Benchmark runs: one JSONL record per sample, written as it goes, resumable, shardable.

``evaluate(loaded, task, k=...)`` answers every (remaining) sample of a task split with or without
VTW, appends one record per sample to the output file (flushed and fsynced per batch, so a crash or
Ctrl-C never loses a finished sample), skips samples already in the file when run again, and
returns a summary computed from every record in the file. ``merge`` combines shard files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ArgumentError, VTWError
from .results import append as _append
from .results import dedupe, locked, read_records
from .spec import IMAGE_MODES, K, RunSpec, runs_stock  # noqa: F401  (IMAGE_MODES: re-exported)

__all__ = ["evaluate", "merge", "summarize", "read_records", "parse_shard", "Summary", "IMAGE_MODES"]



def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' (0-based I) -> (I, N)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ArgumentError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ArgumentError(f"--shard {text}: need 0 <= I < N")
    return i, n


@dataclass
class Summary:
    model: str
    dataset: str
    split: str
    k: int | None
    positions: str
    image_mode: str
    scoring: str
    judge: str | None
    method: str
    prompt_style: str
    samples: int
    metrics: dict
    mean_latency_s: float
    mean_prefill_s: float
    mean_decode_s: float
    mean_vision_tokens: float
    mean_text_tokens: float
    mean_new_tokens: float
    output: str | None = None
    new_samples: int = 0
    missing_shards: list = field(default_factory=list)  # merge(partial=True): shards without records
    skipped: int = 0  # samples whose data could not be decoded (--skip-bad-samples): not in the metrics
    skipped_ids: list = field(default_factory=list)  # the first 50 of them
    warnings: list = field(default_factory=list)  # what the files showed (torn lines, repairs)
    env: dict = field(default_factory=dict)
    schema: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(records: list[dict], task, output: str | None = None, env: dict | None = None,
              new: int = 0) -> Summary:
    records = dedupe(records)  # every sample counts once, however often it was written
    skipped = [str(r["id"]) for r in records if r.get("skipped")]
    records = [r for r in records if not r.get("skipped")]
    if not records:
        raise VTWError("no records to summarise" + (f": all {len(skipped)} samples were skipped (their data "
                                                   "could not be decoded)" if skipped else ""))
    first = records[0]

    def mean(key):
        vals = [float(r[key]) for r in records if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else 0.0

    return Summary(
        model=first["model"], dataset=first["dataset"], split=first["split"], k=first["k"],
        positions=first.get("positions", "keep"), image_mode=first.get("image_mode", "normal"),
        scoring=first.get("scoring", "lenient"), judge=first.get("judge_model"), method=first.get("method", "vtw"),
        prompt_style=first.get("prompt_style", "hf"), samples=len(records),
        metrics=task.metrics(records), mean_latency_s=mean("total_s"),
        mean_prefill_s=mean("prefill_s"), mean_decode_s=mean("decode_s"),
        mean_vision_tokens=mean("num_vision_tokens"), mean_text_tokens=mean("num_text_tokens"),
        mean_new_tokens=mean("new_tokens"), output=output, new_samples=new, env=env or {},
        skipped=len(skipped), skipped_ids=skipped[:50],
    )


_CONFIG_KEYS = ("model", "dataset", "split", "k", "method", "positions", "image_mode", "scoring", "judge_model",
                "prompt_style", "seed", "fastv_ratio", "dart_ratio", "dart_pivots", "settings")


def settings_record(spec, method: str | None = None) -> dict:
    """A method's settings as a JSON record writes them (tuples as lists; empty for VTW and the stock model)."""
    return {name: list(v) if isinstance(v, tuple) else v for name, v in spec.options(method).items()}


def _check_compatible(existing: list[dict], config: dict, path: Path) -> None:
    for rec in existing[:1]:
        diff = {key: (rec.get(key), config.get(key)) for key in _CONFIG_KEYS if rec.get(key) != config.get(key)
                and (key != "settings" or key in rec)}  # records before "settings" carry fastv_/dart_ keys
        if diff:
            what = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
            raise VTWError(f"{path} holds results of another run ({what}); pass another --output")


def _visuals(sample, image_mode: str) -> list:
    """The sample's images as ``image_mode`` shows them: as they are, white images of the same sizes
    (the paper's Table 1 "non-content image"), or none."""
    if image_mode == "none":
        return []
    if image_mode == "blank":
        from PIL import Image

        return [Image.new("RGB", im.size, (255, 255, 255)) for im in sample.images]
    return list(sample.images)


def select(task, split: str | None = None, source: str | None = None, limit: int | None = None,
           shard: tuple[int, int] = (0, 1), seed: int = 0):
    """The samples a run answers: the first ``limit`` of ``split`` (lmms-eval's ``--limit``), then this
    shard's share (every N-th from I). Nothing is decoded; unreadable samples (e.g. missing videos)
    raise ``VTWError`` now, before any model loads."""
    split = split or task.test_split
    every = task.open(split, source, seed)
    if limit is not None and len(every) < limit:
        raise VTWError(f"--limit {limit} is more than the {len(every)} samples of {task.name}/{split}")
    samples = every.first(limit).shard(*shard)
    samples.check()
    return samples


def evaluate(loaded, task, spec: RunSpec | None = None, *, split: str | None = None, limit: int | None = None,
             source: str | None = None, samples=None, output: str | Path | None = None, judge=None,
             progress: Callable[[int, int], None] | None = None, skip_bad_samples: bool = False,
             **settings: Any) -> Summary:
    """Run ``task`` through the model as ``spec`` says (a ``RunSpec``, or shorthand for its K; ``settings``
    change its fields), score each answer as ``spec.scoring`` reads it (``lmms-eval``: lmms-eval's own
    rules; ``lenient``) and summarise.

    ``samples``: what ``select`` returned (the CLI selects before loading the model); by default the
    selection of ``split``, ``limit``, ``spec.shard`` and ``source``. ``judge``: an answer matcher for the
    tasks lmms-eval scores with a GPT judge (``tasks.judge.OpenAIJudge``; MMBench).
    ``spec.method`` (Table 2's rows, ``spec.METHODS``): ``vtw`` at K; ``vtw-random`` at a K drawn per
    sample around K (recorded as ``k_drawn``); ``rand`` (random tokens at K) and ``vtw-random`` draw from
    ``spec.seed`` and the sample id; ``fastv`` at ``fastv_k``; ``stock``. ``max_new_tokens`` None: the
    task's. One run holds ``output`` at a time: a second one is refused, never interleaved; a torn last
    line a crash left in it is cut off before the run appends (``Summary.warnings`` says so).

    A sample whose data cannot be decoded (a corrupt image cell, an image past Pillow's size guard) stops
    the run with a ``tasks.BadSample`` (a ``VTWError`` naming it; every finished record is kept), or with
    ``skip_bad_samples`` is written as a record with ``skipped: true`` and its ``error``, left out of the
    metrics and counted in ``Summary.skipped`` (a later run tries it again).
    """
    spec = RunSpec.of(spec, **settings)
    if spec.scoring not in task.parsers:
        raise ArgumentError(f"--scoring must be one of {', '.join(task.parsers)}, got {spec.scoring!r}")
    split = split or task.test_split
    if samples is None:
        samples = select(task, split, source, limit, spec.shard)
    path = Path(output) if output else None
    with locked(path):
        return _evaluate(loaded, task, spec, split, samples, path, judge, progress, skip_bad_samples)


def _evaluate(loaded, task, spec: RunSpec, split, samples, path, judge, progress, skip_bad) -> Summary:
    from .env import environment
    from .infer import generate
    from .methods import random_k, sample_seed
    from .results import repair_tail, scan
    from .tasks import BadSample

    index, count = spec.shard
    n = loaded.num_layers
    k = spec.layer(n, loaded.name, task.name)
    method = spec.method
    if method == "vtw" and runs_stock(method, k, n):
        method = "stock"
    seed = spec.seed or 0
    judge_model = getattr(judge, "name", None) if judge is not None and task.judge_parser is not None else None
    config = {"model": loaded.name, "dataset": task.name, "split": split, "k": k if k is not None else n,
              "method": method, "positions": spec.positions, "image_mode": spec.image_mode,
              "scoring": spec.scoring, "judge_model": judge_model, "prompt_style": loaded.prompt_style}
    if method in ("rand", "vtw-random"):
        config["seed"] = seed
    options = settings_record(spec, method)
    if options:
        config["settings"] = options
        if spec.own_layer(method) is not None:
            config["k"] = spec.own_layer(method)
    if method == "fastv":  # the keys of records before "settings"
        config.update(fastv_ratio=spec.fastv_ratio)
    if method == "dart":
        config.update(dart_ratio=spec.dart_ratio, dart_pivots=list(spec.dart_pivots))
    existing: list[dict] = []
    warnings: list[str] = []
    if path is not None:
        found = scan(path)
        existing = dedupe(found.records)
        _check_compatible(existing, config, path)
        warnings = found.notes(path, tail=False)
        if repair_tail(path):  # a crash cut the last line short: cut it off before appending
            warnings.append(f"{path}: removed a torn last line (a write cut short by a crash or a full disk); "
                            "its sample runs again")
    wanted = set(samples.ids)
    records = [r for r in existing if r["id"] in wanted and not r.get("skipped")]
    todo = samples.exclude(r["id"] for r in existing if not r.get("skipped"))  # skipped ones are tried again
    finished = len(samples) - len(todo)
    if progress:
        progress(finished, len(samples))
    run = RunSpec.of(spec, method=method, k=k, seed=seed, stop=tuple(task.until or ()),
                     max_new_tokens=spec.max_new_tokens or task.max_new_tokens)
    new = 0
    for start in range(0, len(todo), spec.batch_size):
        batch, out = [], []
        for s in todo[start:start + spec.batch_size].decoded():
            if not isinstance(s, BadSample):
                batch.append(s)
            elif skip_bad:
                out.append({"id": s.sample_id, **config, "skipped": True, "error": s.cause,
                            "shard": f"{index}/{count}", "shard_size": len(samples)})
            else:
                raise s
        drawn = [random_k(seed, s.id, k if k is not None else n, n) for s in batch] if method == "vtw-random" else None
        # rows of one generate call share a K: VTW† runs each drawn K as its own sub-batch
        for ks, rows in _by_k(batch, drawn) if batch else ():
            images = [_visuals(s, spec.image_mode) for s in rows]
            videos = [s.video if spec.image_mode == "normal" else None for s in rows]
            inputs = loaded.build_inputs([s.prompt for s in rows], images=images, videos=videos)
            gen = generate(loaded, inputs, replace(run, k=K(ks)) if ks is not None else run,
                           seeds=[sample_seed(seed, s.id) for s in rows])
            for j, s in enumerate(rows):
                result = task.process(s, gen.answers[j], spec.scoring, judge)
                rec = {
                    "id": s.id, **config, "prompt_hash": prompt_hash(s.prompt), "answer": gen.answers[j],
                    "parsed": result["parsed"], "target": s.answer, "correct": result["correct"],
                    "judge": result["judge"], "num_images": len(images[j]),
                    "num_vision_tokens": gen.num_vision_tokens[j], "num_text_tokens": gen.num_text_tokens[j],
                    "new_tokens": gen.new_tokens[j], "prefill_s": gen.prefill_s / len(rows),
                    "decode_s": gen.decode_s / len(rows), "total_s": gen.total_s / len(rows),
                    "batch_size": len(rows), "shard": f"{index}/{count}", "shard_size": len(samples),
                    "meta": _jsonable(s.meta),
                }
                if ks is not None:
                    rec["k_drawn"] = ks
                out.append(rec)
        order = {sid: i for i, sid in enumerate(todo[start:start + spec.batch_size].ids)}
        out.sort(key=lambda r: order[r["id"]])
        if path is not None:
            _append(path, out)
        records.extend(out)
        new += len(out)
        finished += len(out)
        if progress:
            progress(finished, len(samples))
    summary = summarize(records, task, str(path) if path else None, environment(loaded), new)
    summary.warnings = warnings
    return summary


def _by_k(batch: list, drawn: list[int] | None) -> list[tuple[int | None, list]]:
    """The batch as (K, rows) groups: one group (K None: the run's K) unless K was drawn per sample."""
    if drawn is None:
        return [(None, batch)]
    groups: dict[int, list] = {}
    for s, kk in zip(batch, drawn):
        groups.setdefault(kk, []).append(s)
    return list(groups.items())


def _jsonable(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def merge(paths: list[str | Path], output: str | Path | None = None, partial: bool = False) -> Summary:
    """Combine shard files into one summary (and one JSONL file if ``output`` is given: valid JSONL, one
    record per sample). Torn lines a crash left are not counted; ``Summary.warnings`` names them.

    Every shard of the run must be there (records say ``shard: "I/N"``); ``partial=True`` summarises
    the shards present and lists the missing ones in ``Summary.missing_shards``.
    """
    from . import tasks
    from .files import atomic_write, check_file_target, dumps, lock

    if not paths:
        raise VTWError("give the results files to merge")
    check_file_target(output, "merged results file")
    from .results import scan

    records: list[dict] = []
    configs = set()
    warnings: list[str] = []
    for p in paths:
        found = scan(p, missing_ok=False)
        recs = found.records
        warnings += found.notes(p)
        for r in recs:
            configs.add(tuple(str(r.get(k)) for k in _CONFIG_KEYS))
        records.extend(recs)
    if len(configs) > 1:
        raise VTWError("the files hold results of different runs (model, dataset, split, k, positions or "
                       "image mode differ); merge files of one run only")
    merged = dedupe(records)
    if not merged:
        raise VTWError("the results files hold no records")
    missing = _missing_shards(merged)
    if missing and not partial:
        raise VTWError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing from the files "
                       "given; merge every shard's file, or pass --partial to summarise the shards present")
    task = tasks.get(merged[0]["dataset"])
    if output is not None:
        with lock(output, "merged results file"):
            atomic_write(output, "".join(dumps(r) + "\n" for r in merged))
    summary = summarize(merged, task, str(output) if output else None, {}, 0)
    summary.missing_shards = missing
    expected = _expected(merged)
    if expected is not None and len(merged) < expected:
        warnings.append(f"the files hold {len(merged)} of the run's {expected} samples: the run is not finished "
                        "(run its command again to resume)")
    summary.warnings = warnings
    return summary


def _expected(records: list[dict]) -> int | None:
    """How many samples the run's shards select (records say ``shard_size``); None when a record does not."""
    sizes: dict[str, int] = {}
    for r in records:
        if not isinstance(r.get("shard_size"), int):
            return None
        sizes[str(r.get("shard"))] = r["shard_size"]
    return sum(sizes.values()) if sizes else None


def _missing_shards(records: list[dict]) -> list[str]:
    """Shards ("I/N") of the run that no record comes from (records without a shard field: none)."""
    seen: set[int] = set()
    counts: set[int] = set()
    for r in records:
        try:
            i, n = (int(x) for x in str(r["shard"]).split("/"))
        except (KeyError, ValueError):
            continue
        seen.add(i)
        counts.add(n)
    if len(counts) > 1:
        raise VTWError(f"the files come from different shardings ({', '.join(f'N={n}' for n in sorted(counts))}); "
                       "merge the shards of one run")
    if not counts:
        return []
    n = counts.pop()
    return [f"{i}/{n}" for i in range(n) if i not in seen]


def distributed_context() -> tuple[int, int, Any]:
    """(rank, world size, torch.distributed module or None) when launched by torchrun / accelerate."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), dist
