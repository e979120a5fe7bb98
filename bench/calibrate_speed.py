"""Calibration cost: the fast KL sweep vs one baseline prefill vs the naive sweep, side by side.

A LLaVA-shaped random model (CPU-sized decoder, 576 vision + ~66 text tokens) is timed in one run:
- one stock prefill (the unit),
- ``sweep_sample`` (one prefill + text-only tails for K = k_min..N-1),
- the naive sweep (one full forward under ``withdraw(model, K)`` per candidate, plus the baseline),
and the measured ratio is compared with the lower bound 1 + sum_K (N-K)*T / (N*S) prefills.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from vtwctl.calibrate import sweep_sample
from vtwctl.engine.hooks import withdraw
from vtwctl.env import environment
from vtwctl.files import dumps  # strict JSON (NaN -> null)


def llava_shaped(layers: int, hidden: int, image: int = 336, patch: int = 14, vocab: int = 32064):
    """A random LLaVA-1.5-shaped model (CLIP tower shrunk); the image token is ``vocab - 64`` (32000 by default)."""
    import transformers as tf

    cfg = tf.LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=4096),
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=2, image_size=image, patch_size=patch, projection_dim=64),
        image_token_id=vocab - 64, vision_feature_layer=-1, vision_feature_select_strategy="default")
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return tf.LlavaForConditionalGeneration(cfg).eval()


def batch_inputs(rows: list[int], per_image: int = 576, image: int = 336, text: int = 66, pre: int = 35,
                 image_token: int = 32000) -> dict:
    """Rows with ``rows[i]`` images (0 = text only) of ``per_image`` tokens after ``pre`` of the ``text`` text
    tokens, left-padded; LLaVA's image token 32000 (``llava_shaped``'s ``vocab - 64``)."""
    g = torch.Generator().manual_seed(0)
    seqs = []
    for n in rows:
        head = torch.randint(3, image_token - 2000, (pre,), generator=g)
        tail = torch.randint(3, image_token - 2000, (text - pre,), generator=g)
        seqs.append(torch.cat([head, torch.full((n * per_image,), image_token), tail]))
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = s, 1
    x = {"input_ids": ids, "attention_mask": mask}
    if sum(rows):
        x["pixel_values"] = torch.randn(sum(rows), 3, image, image, generator=g)
    return x


def one_image_prompt(n_vis: int = 576, text: int = 66, pre: int = 35) -> dict:
    """One LLaVA-1.5-shaped input: ``pre`` text tokens, ``n_vis`` image tokens, the rest of the text tokens."""
    return batch_inputs([1], n_vis, 336, text, pre)


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, round-robin (so drift hits all alike), after one warm-up each."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def main(layers: int = 16, hidden: int = 768, text: int = 66, k_min: int = 5, repeats: int = 3) -> dict:
    model = llava_shaped(layers, hidden)
    n_vis = (336 // 14) ** 2
    x = one_image_prompt(n_vis, text)
    s = x["input_ids"].shape[1]

    def naive():
        model(**x, use_cache=False, logits_to_keep=1)
        for k in range(k_min, layers):
            with withdraw(model, k):
                model(**x, use_cache=False, logits_to_keep=1)

    with torch.no_grad():
        times = interleaved({"prefill": lambda: model(**x, use_cache=False, logits_to_keep=1),
                             "fast": lambda: sweep_sample(model, x, k_min), "naive": naive}, repeats)
    prefill, fast, slow = times["prefill"], times["fast"], times["naive"]
    unit = statistics.median(prefill)
    bound = 1 + sum((layers - k) * text for k in range(k_min, layers)) / (layers * s)
    naive_bound = 1 + sum((k * s + (layers - k) * text) for k in range(k_min, layers)) / (layers * s)
    result = {
        "benchmark": "calibrate_speed",
        "model": {"layers": layers, "hidden": hidden, "vision_tokens": n_vis, "text_tokens": text, "k_min": k_min},
        "prefill_s": {"median": unit, "samples": prefill},
        "fast_sweep_s": {"median": statistics.median(fast), "samples": fast},
        "naive_sweep_s": {"median": statistics.median(slow), "samples": slow},
        "fast_in_prefills": statistics.median(fast) / unit,
        "lower_bound_in_prefills": bound,
        "fast_over_bound": statistics.median(fast) / unit / bound,
        "naive_in_prefills": statistics.median(slow) / unit,
        "naive_bound_in_prefills": naive_bound,
        "speedup_vs_naive": statistics.median(slow) / statistics.median(fast),
        "llava_1_5_7b_bound_in_prefills": 1 + sum((32 - k) * 66 for k in range(5, 32)) / (32 * 642),
        "batched": batched(model, x, k_min, bound, repeats),
        "end_to_end": end_to_end(repeats),
        "env": environment(),
    }
    return result


def batched(model, x: dict, k_min: int, bound: float, repeats: int, sizes=(1, 4, 16)) -> dict:
    """calibrate --batch-size B: the batched sweep (sweep_batch) in units of the same batch's stock prefill,
    against the same token-layer bound (equal rows, so the bound per row is the bound of the batch)."""
    from vtwctl.calibrate import sweep_batch

    out = {}
    for b in sizes:
        xb = {key: torch.cat([val] * b) for key, val in x.items()}
        with torch.no_grad():
            t = interleaved({"prefill": lambda xb=xb: model(**xb, use_cache=False, logits_to_keep=1),
                             "sweep": lambda xb=xb: sweep_batch(model, xb, k_min)}, repeats)
        unit = statistics.median(t["prefill"])
        out[str(b)] = {"prefill_s": unit, "sweep_s": statistics.median(t["sweep"]),
                       "sweep_in_prefills": statistics.median(t["sweep"]) / unit,
                       "sweep_over_bound": statistics.median(t["sweep"]) / unit / bound,
                       "samples": {"prefill": t["prefill"], "sweep": t["sweep"]}}
    return out


def end_to_end(repeats: int, samples: int = 20, sizes=(1, 4)) -> dict:
    """``vtwctl calibrate`` (demo model, 20 validation samples) against a one-token ``vtwctl run --dataset``
    over 20 validation samples, with the same --batch-size; both through the console script, interleaved."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("vtwctl")
    out = {}
    for b in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            def cal(b=b, tmp=tmp):
                subprocess.run([exe, "calibrate", "--samples", str(samples), "--batch-size", str(b), "--no-save",
                                "--profile-dir", tmp, "--json"], check=True, capture_output=True)

            def run(b=b, tmp=tmp):
                out_file = Path(tmp) / "run.jsonl"
                out_file.unlink(missing_ok=True)
                subprocess.run([exe, "run", "--dataset", "shapes", "--split", "validation", "--limit", str(samples),
                                "--max-new-tokens", "1", "--no-withdraw", "--batch-size", str(b), "--output",
                                str(out_file), "--json"], check=True, capture_output=True)

            t = interleaved({"calibrate": cal, "run": run}, repeats)
        out[str(b)] = {"calibrate_s": statistics.median(t["calibrate"]), "run_one_token_s": statistics.median(t["run"]),
                       "ratio": statistics.median(t["calibrate"]) / statistics.median(t["run"]), "samples": t}
    return out


if __name__ == "__main__":
    res = main()
    out = Path(__file__).parent / "results" / "calibrate_speed.json"
    out.write_text(dumps(res, indent=2))
    print(dumps({k: v for k, v in res.items() if k != "env"}, indent=2))
