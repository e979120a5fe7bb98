"""VTW vs stock behind vLLM's OpenAI server, under load: throughput ratios measured side by side.

A LLaVA-1.5-shaped model with random weights (``vtwctl.testing.checkpoints.save_bench_llava``: 576 vision
tokens per 336-pixel image, a Llama text model of ``--layers`` x ``--hidden``, a 32,000-token vocabulary)
is served twice at once through ``vtwctl serve`` on loopback: stock (``--k N``) and VTW (``--k K``), with
the same engine options and the same KV-cache memory. Both servers are up during a mode; a client drives
one at a time, in the order stock, VTW, VTW, stock (ABBA) for every point, so that drift on the machine
falls on both. Points: concurrency 1/4/16/64 x a prompt-heavy workload (one image + ~70 text tokens, 2
output tokens) and a decode-heavy one (the same prompt, 32 output tokens); modes: vLLM's default compile
mode and ``--enforce-eager``. Each request is a chat completion with its own image (a data URL; distinct
images, so no encoder output is shared), ``temperature 0`` and ``ignore_eos``.

Then the KV-bound scenario: the KV-cache memory of ~8 stock requests (``--kv-cache-memory-bytes``) and
32 concurrent decode-heavy requests, the VTW server with ``--max-text-len 128``; reported: vLLM's own
"Maximum concurrency" log line of each server, the requests vLLM ran at once
(``vllm:num_requests_running`` sampled from /metrics) and throughput.

Results: JSON (every run's wall time, tokens, environment) and a plot. Needs the vLLM venv
(docs/serving.md); a few tens of minutes on 2 cores with the defaults.

    python bench/vllm_serve_load.py --out bench/results/vllm_serve_load.json
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import datetime
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

WORKLOADS = {"prompt-heavy": 2, "decode-heavy": 32}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``vtwctl serve`` process on loopback."""

    def __init__(self, name: str, model: Path, k: int, args: list[str], log_dir: Path, threads: int):
        self.name, self.port = name, _free_port()
        self.log_path = log_dir / f"{name}.log"
        exe = os.path.join(os.path.dirname(sys.executable), "vtwctl")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(log_dir / "vllm-cache")}
        self.proc = subprocess.Popen([exe, "serve", "--model", str(model), "--k", str(k), "--port", str(self.port),
                                      "--served-model-name", "bench", *args],
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait(self, timeout: float = 1800) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                time.sleep(2)
        raise RuntimeError(f"{self.name} did not come up in {timeout} s")

    def max_concurrency(self) -> float | None:
        found = re.findall(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x", self.log_path.read_text())
        return float(found[-1]) if found else None

    def running(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        values = re.findall(r"^vllm:num_requests_running\{[^}]*\} ([\d.e+]+)$", text, re.M)
        return sum(float(v) for v in values)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _image(seed: int, size: int) -> str:
    """A smooth image (small PNG) that differs per seed, as a data URL."""
    import numpy as np
    from PIL import Image

    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * (rs.rand() * x + rs.rand() * y + rs.rand())) for _ in range(3)]
    pixels = ((np.stack(channels, -1) + 1) * 127.5).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(seed: int, max_tokens: int, text_words: int, image_size: int) -> bytes:
    import numpy as np

    words = " ".join(f"w{i}" for i in np.random.RandomState(seed).randint(3, 250, text_words))
    content = [{"type": "image_url", "image_url": {"url": _image(seed, image_size)}}, {"type": "text", "text": words}]
    return json.dumps({"model": "bench", "messages": [{"role": "user", "content": content}], "temperature": 0,
                       "max_tokens": max_tokens, "ignore_eos": True}).encode()


def drive(server: Server, bodies: list[bytes], concurrency: int, sample_running: bool = False) -> dict:
    """Send ``bodies`` with ``concurrency`` in flight; wall time, tokens and (optionally) running requests."""
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    samples: list[float] = []
    done = threading.Event()

    def sampler():
        while not done.wait(0.25):
            try:
                samples.append(server.running())
            except OSError:
                pass

    def one(body: bytes) -> dict:
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        out = json.loads(urllib.request.urlopen(req, timeout=3600).read())
        return {"latency": time.perf_counter() - t0, "prompt": out["usage"]["prompt_tokens"],
                "completion": out["usage"]["completion_tokens"]}

    thread = threading.Thread(target=sampler, daemon=True) if sample_running else None
    if thread:
        thread.start()
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    done.set()
    out = {"wall_s": wall, "requests": len(results), "req_per_s": len(results) / wall,
           "prompt_tokens": sum(r["prompt"] for r in results),
           "output_tokens": sum(r["completion"] for r in results),
           "mean_latency_s": sum(r["latency"] for r in results) / len(results)}
    out["output_tok_per_s"] = out["output_tokens"] / wall
    if sample_running:
        busy = [s for s in samples if s > 0]
        out["running_mean"] = sum(busy) / len(busy) if busy else 0.0
        out["running_max"] = max(samples, default=0.0)
    return out


def prefill_flops(layers: int, hidden: int, intermediate: int, rows: int, keys_per_row: float) -> float:
    """Decoder FLOPs of a prefill: the linear layers of ``rows`` rows and causal attention over
    ``keys_per_row`` keys on average, per layer (multiply-add = 2 FLOPs)."""
    linear = 2 * rows * (4 * hidden * hidden + 3 * hidden * intermediate)
    attention = 2 * 2 * rows * keys_per_row * hidden
    return layers * (linear + attention)


def flops_ratio(layers: int, hidden: int, k: int, prompt: int, text: int) -> float:
    """VTW / stock decoder FLOPs of one prompt of ``prompt`` tokens, ``text`` of them text, withdrawn at K."""
    inter = 11 * hidden // 4
    stock = prefill_flops(layers, hidden, inter, prompt, (prompt + 1) / 2)
    vtw = prefill_flops(k, hidden, inter, prompt, (prompt + 1) / 2) + prefill_flops(
        layers - k, hidden, inter, text, (text + 1) / 2)
    return vtw / stock


def requests_for(concurrency: int, minimum: int) -> int:
    return max(minimum, 2 * concurrency if concurrency < 64 else concurrency)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--k", type=int, default=None, help="withdrawal layer (default: layers // 2)")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--modes", default="compiled,eager")
    ap.add_argument("--workloads", default="prompt-heavy,decode-heavy")
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--text-words", type=int, default=60, help="words of text per prompt (plus the template's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="float16/bfloat16 on a GPU")
    ap.add_argument("--kv-bound", type=int, default=32, help="concurrent requests of the KV-bound scenario (0: skip)")
    ap.add_argument("--max-text-len", type=int, default=128,
                    help="the KV-bound VTW server's --max-text-len (text tokens a request may hold)")
    ap.add_argument("--work", default="/tmp/vtwctl-serve-load", help="model, logs and vLLM's compile cache")
    ap.add_argument("--out", default="bench/results/vllm_serve_load.json")
    ap.add_argument("--report", metavar="JSON", help="print the tables of docs/serving.md from a results file and exit")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    from vtwctl.testing.checkpoints import save_bench_llava

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"bench-llava-{args.layers}x{args.hidden}"
    if not (model / "config.json").exists():
        save_bench_llava(model, num_layers=args.layers, hidden=args.hidden, heads=args.heads)
    k = args.layers // 2 if args.k is None else args.k
    levels = [int(c) for c in args.concurrency.split(",")]
    common = ["--dtype", args.dtype, "--max-model-len", "1024", "--max-num-seqs", str(max(levels, default=1)),
              "--max-num-batched-tokens", "2048", "--limit-mm-per-prompt", '{"image": 1}']
    result = {"bench": "vllm_serve_load", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "vision_tokens": 576,
                        "vocab": 32000, "dtype": args.dtype}, "k": k, "points": [], "kv_bound": None}
    try:
        import vllm

        result["machine"]["vllm"] = vllm.__version__
    except ImportError:
        pass
    seed = 0
    for mode in [m for m in args.modes.split(",") if m]:
        extra = common + ["--kv-cache-memory-bytes", str(4 << 30)] + (["--enforce-eager"] if mode == "eager" else [])
        servers = {"stock": Server(f"stock-{mode}", model, args.layers, extra, work, args.threads),
                   "vtw": Server(f"vtw-{mode}", model, k, extra, work, args.threads)}
        try:
            for s in servers.values():
                s.wait()
            for workload in args.workloads.split(","):
                # warm-up: two requests of the workload's shape on each server, not timed
                warm = [_body(10_000 + i, WORKLOADS[workload], args.text_words, 336) for i in range(2)]
                for s in servers.values():
                    drive(s, warm, 1)
                for c in levels:
                    n = requests_for(c, args.min_requests)
                    point = {"mode": mode, "workload": workload, "concurrency": c, "requests": n, "runs": []}
                    for variant in ("stock", "vtw", "vtw", "stock"):
                        bodies = [_body(seed + i, WORKLOADS[workload], args.text_words, 336) for i in range(n)]
                        seed += n
                        run = drive(servers[variant], bodies, c)
                        point["runs"].append({"variant": variant, **run})
                        print(f"{mode} {workload} c={c} {variant}: {run['req_per_s']:.3f} req/s", flush=True)
                    tput = {v: sum(r["req_per_s"] for r in point["runs"] if r["variant"] == v) / 2
                            for v in ("stock", "vtw")}
                    point["req_per_s"] = tput
                    point["ratio"] = tput["vtw"] / tput["stock"]
                    runs = point["runs"]
                    prompt = runs[0]["prompt_tokens"] / runs[0]["requests"]
                    point["prompt_tokens"] = prompt
                    point["decoder_flops_ratio"] = flops_ratio(args.layers, args.hidden, k, round(prompt),
                                                               round(prompt) - 576)
                    result["points"].append(point)
                    print(f"  -> VTW / stock = {point['ratio']:.3f}", flush=True)
                    save(result, args.out)
            result.setdefault("max_concurrency", {})[mode] = {v: s.max_concurrency() for v, s in servers.items()}
        finally:
            for s in servers.values():
                s.stop()
    if args.kv_bound:
        result["kv_bound"] = kv_bound(args, model, k, work, common, seed)
    save(result, args.out)
    if result["points"]:
        plot(result, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out}")


def save(result: dict, out: str) -> None:
    """Write the results so far (a later failure keeps every finished point)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


def kv_bound(args, model: Path, k: int, work: Path, common: list[str], seed: int) -> dict:
    """KV memory for ~8 stock requests of one image + text + 32 output tokens; 32 concurrent requests."""
    block = 32  # vLLM's CPU attention takes blocks of multiples of 32 tokens
    per_token = 2 * args.hidden * (4 if args.dtype == "float32" else 2) * args.layers  # K and V, every layer
    tokens = -(-(576 + args.text_words + 8 + 32) // block) * block
    budget = 8 * tokens * per_token
    flags = common + ["--kv-cache-memory-bytes", str(budget), "--block-size", str(block),
                      "--max-num-seqs", str(args.kv_bound)]
    out = {"kv_cache_memory_bytes": budget, "concurrent_requests": args.kv_bound, "block_size": block,
           "vtw_max_text_len": args.max_text_len, "runs": []}
    servers = {"stock": Server("kv-stock", model, args.layers, flags, work, args.threads),
               "vtw": Server("kv-vtw", model, k, flags + ["--max-text-len", str(args.max_text_len)], work,
                             args.threads)}
    try:
        for s in servers.values():
            s.wait()
        for variant in ("stock", "vtw", "vtw", "stock"):
            bodies = [_body(seed + i, 32, args.text_words, 336) for i in range(args.kv_bound)]
            seed += args.kv_bound
            run = drive(servers[variant], bodies, args.kv_bound, sample_running=True)
            out["runs"].append({"variant": variant, **run})
            print(f"kv-bound {variant}: {run['req_per_s']:.3f} req/s, running mean {run['running_mean']:.1f}",
                  flush=True)
        out["max_concurrency"] = {v: s.max_concurrency() for v, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    for key in ("req_per_s", "running_mean"):
        out[key] = {v: sum(r[key] for r in out["runs"] if r["variant"] == v) / 2 for v in ("stock", "vtw")}
    out["ratio"] = out["req_per_s"]["vtw"] / out["req_per_s"]["stock"]
    return out


def report(result: dict) -> str:
    """Markdown tables of a results file: the grid (VTW / stock throughput per point) and the KV-bound run."""
    m = result["model"]
    lines = [f"{m['layers']} x {m['hidden']} LLaVA-1.5 shape ({m['vision_tokens']} vision tokens an image, "
             f"{m['dtype']}), K = {result['k']}; requests/s, mean of the two runs of each variant (ABBA).", "",
             "| mode | workload | concurrency | requests | stock req/s | VTW req/s | VTW / stock "
             "| prefill decoder FLOPs, stock / VTW |",
             "|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        lines.append(f"| {p['mode']} | {p['workload']} | {p['concurrency']} | {p['requests']} | "
                     f"{p['req_per_s']['stock']:.3f} | {p['req_per_s']['vtw']:.3f} | **{p['ratio']:.2f}** | "
                     f"{1 / p['decoder_flops_ratio']:.2f} |")
    kv = result.get("kv_bound")
    if kv:
        lines += ["", f"KV-bound: {kv['kv_cache_memory_bytes'] / 2**20:.0f} MiB of KV cache, "
                  f"{kv['concurrent_requests']} concurrent decode-heavy requests, VTW server with --max-text-len "
                  f"{kv['vtw_max_text_len']}.", "",
                  "| | stock | VTW | VTW / stock |", "|---|---|---|---|"]
        for key, label in (("max_concurrency", "vLLM's reported maximum concurrency (1,024-token requests)"),
                           ("running_mean", "requests running at once (mean of /metrics samples)"),
                           ("req_per_s", "throughput, requests/s")):
            st, vt = kv[key]["stock"], kv[key]["vtw"]
            lines.append(f"| {label} | {st:.2f} | {vt:.2f} | **{vt / st:.2f}** |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({p["mode"] for p in result["points"]})
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.6), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for workload in WORKLOADS:
            pts = [p for p in result["points"] if p["mode"] == mode and p["workload"] == workload]
            if pts:
                ax.plot([p["concurrency"] for p in pts], [p["ratio"] for p in pts], marker="o", label=workload)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("VTW / stock throughput")
        ax.set_title(f"{mode} (K={result['k']} of {result['model']['layers']})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
