#!/usr/bin/env bash
# The checks that need a CUDA GPU, each step's output in its own log (at most 15 minutes, the steps' time limits;
# on one H200 the first, fourth and last step took 26, 34 and 127 s):
#   1. the demo chain on the GPU against the CPU (benchmarks/check_gpu.py: same masks, embeddings and answers);
#   2. the fast mask generator against segment-anything's on the GPU: SAM vit_h (random weights, steepened) at
#      16 x 16 and 32 x 32 points, and the demo SAM on 8 demo images at its own gates and at 32 x 32;
#   3. CLIP fine-tuning steps with mixed precision (ViT-B/32, random weights, batch 64);
#   4. the naive pipeline against ours (benchmarks/bench_pipeline.py --device cuda);
#   5. the test suite on the GPU machine (no notebooks, no Ray: they need Jupyter and Ray installed).
# Every step runs under a time limit and the next one runs whatever happened; the summary lists each exit status.
#
#   benchmarks/gpu_checks.sh [LOG_DIR]                                   # default: outputs/gpu_checks
#   ONLY="generator_vit_h pipeline" benchmarks/gpu_checks.sh LOG_DIR    # some steps only (names as below)
set -u
cd "$(dirname "$0")/.."
logs=${1:-outputs/gpu_checks}
mkdir -p "$logs"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # helpers/ without an install
summary="$logs/summary.txt"
: >"$summary"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to LOG_DIR/NAME.log, note the status
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local start=$SECONDS
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status, $((SECONDS - start)) s" | tee -a "$summary"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'bf16', torch.cuda.is_bf16_supported(), 'python', platform.python_version(), 'cpus', torch.get_num_threads())"
} >"$logs/environment.txt" 2>&1
cat "$logs/environment.txt"

step demo_chain 90 "$py" benchmarks/check_gpu.py --device cuda --images 8
step generator_vit_h 240 "$py" benchmarks/bench_generator.py --device cuda --model vit_h --sides 16 32 --huge 0
step generator_demo 150 "$py" benchmarks/bench_generator.py --device cuda --model sam_demo \
    --checkpoint helpers/demo/weights/sam_demo.pth --demo-images 8 --sides 16 32 --gates default open \
    --pred-iou-thresh 0.5 --stability-score-thresh 0.7 --crop-n-layers 1 --huge 0 --no-bf16
step finetune_vit_b_32 60 "$py" benchmarks/bench_finetune.py --model vit_b_32 --device cuda --batch 64 --steps 10
step pipeline 180 "$py" benchmarks/bench_pipeline.py --device cuda
step tests 180 "$py" -m pytest -v -n 16 --timeout 90 -p no:cacheprovider -p no:benchmark tests --ignore=tests/test_notebook_flow.py \
    --ignore=tests/test_distributed.py --ignore=tests/test_notebooks_layout.py --ignore=tests/test_package_layout.py
cat "$summary"
