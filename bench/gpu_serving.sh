#!/usr/bin/env bash
# VTW inside vLLM on one NVIDIA GPU, in one command (about 10 minutes): the equality tests, then the load bench.
#
#   bash bench/gpu_serving.sh                 # writes bench/results/vllm_serve_load-gpu.json (+ .png)
#
# Needs a CUDA build of vLLM and vtwctl in the same environment (pip install "vtwctl[vllm]"); no downloads
# (the tests' checkpoints are made on the spot). What it does, each step with its own line of output:
#   1. the GPU, vLLM and the attention backend vLLM picks for float32 (the tests' dtype);
#   2. tests/test_vllm_serving.py on the GPU for LLaVA-1.5 and Qwen2-VL: stock vLLM == transformers, and
#      vLLM with VTW == vtwctl's engine (whole and chunked prefill, eager and vLLM's compile mode with CUDA
#      graphs), the text-only KV blocks, preemption; the text-row metadata goes through that backend's own
#      metadata builder, the same code path as on the CPU;
#   3. bench/vllm_serve_load.py at a 16 x 2048 LLaVA-1.5 shape (576 vision tokens), default mode only,
#      concurrency 1/16/64: VTW / stock throughput, side by side.
# Exit status: 0 when every test passed (the bench's ratios are in its JSON), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_JSON="${OUT:-bench/results}/vllm_serve_load-gpu.json"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU visible (nvidia-smi)" >&2; exit 2
fi
if ! python -c "import vllm, vtwctl.integrations.vllm" 2>/dev/null; then
    echo "error: vLLM (a CUDA build) and vtwctl must be importable here: pip install 'vtwctl[vllm]'" >&2; exit 2
fi
echo "== 1/3 environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import vllm, torch; print('vllm', vllm.__version__, '| torch', torch.__version__, '| cuda', torch.version.cuda)"
export VTWCTL_VLLM_TEST_DEVICE=cuda HF_HUB_OFFLINE=1
echo "== 2/3 equality tests on the GPU (LLaVA-1.5, Qwen2-VL)"
status=0
timeout 420 python -m pytest -q -m "slow or not slow" tests/test_vllm_serving.py \
    -k "(llava] or llava- or qwen2_vl) and (equals or holds or preemption) and not tensor_parallel" \
    -p no:cacheprovider || status=1
echo "== 3/3 load bench (16 x 2048, 576 vision tokens, default mode)"
timeout 300 python bench/vllm_serve_load.py --layers 16 --hidden 2048 --heads 16 --modes compiled \
    --concurrency 1,16,64 --dtype float16 --threads 8 --kv-bound 0 --out "$OUT_JSON" || status=1
python - "$OUT_JSON" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
for p in r["points"]:
    print(f"{p['mode']:9s} {p['workload']:13s} c={p['concurrency']:<3d} VTW/stock throughput {p['ratio']:.3f}")
EOF
exit $status
