#!/usr/bin/env bash
# The paper's Table 4 on your GPU: latency per example, per-sample GPU memory and TFLOPs of the stock
# model, FastV and VTW (K=16) for a real checkpoint, averaged over the first 20 test samples.
#
#   bash bench/gpu.sh                                   # llava-next-7b on sqa, writes bench/results/table4.json
#   bash bench/gpu.sh llava-1.5-7b pope 16              # MODEL DATASET K [more options for bench/table4.py]
#   bash bench/gpu.sh --dry-run                         # the demo model on the CPU (what CI runs; ~1 min)
#
# Then (unless COMPILED=0) bench/compiled_decode.py at LLaVA-7B's decoder shape: VTW's compiled decode step
# vs the stock model's, static caches, written to bench/results/compiled_decode-gpu.json.
#
# Needs vtwctl installed (README), the checkpoint in the Hugging Face cache (or the hub reachable) and
# the dataset (or --data-dir). The JSON holds the environment (GPU, driver, versions) with the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--dry-run" ]; then
    shift
    exec python bench/table4.py --model demo --dataset shapes --k 4 --samples 2 --repeats 1 --warmup 0 \
        --max-new-tokens 4 --device cpu --out "${OUT:-bench/results/table4-dry-run.json}" "$@"
fi
MODEL="${1:-llava-next-7b}"; DATASET="${2:-sqa}"; K="${3:-16}"
shift $(( $# < 3 ? $# : 3 ))
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU visible (nvidia-smi); bash bench/gpu.sh --dry-run runs the CPU dry run" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
python bench/table4.py --model "$MODEL" --dataset "$DATASET" --k "$K" --samples 20 --repeats 5 --warmup 2 \
    --device cuda --dtype float16 --attn-implementation sdpa --out "${OUT:-bench/results/table4.json}" "$@"
# the compiled fast path at LLaVA-7B's decoder shape (random weights; COMPILED=0 skips it; ~10 min)
if [ "${COMPILED:-1}" != "0" ]; then
    python bench/compiled_decode.py --device cuda --dtype float16 --layers 32 --hidden 4096 --vocab 32064 \
        --out "${COMPILED_OUT:-bench/results/compiled_decode-gpu.json}"
fi
