#!/usr/bin/env bash
# All GPU checks of protohead in one run (about 9 minutes on an H100, compilation included).
# Needs torch, torchvision, einops, pytest and hypothesis; nothing is installed. Each step
# prints its own table, and the run ends with one summary table of every figure
# (benchmarks/gpu_summary.py over the log):
#   1. benchmarks/bench_memory_ops.py on the GPU: OCM memory update + prototypes, ms against
#      the naive re-reduction (M = 8192 / 65536 / 262144, B = 64 / 256), eager, fused
#      (fused=True: each size compiles first) and CUDA-graph replay, aten ops counted;
#   2. benchmarks/bench_decode.py: JPEG bytes -> batched decode (nvJPEG) -> crops on the GPU,
#      against PIL decode + MultiCropTransform on one CPU core (x16 for 16 workers);
#   3. benchmarks/gpu_check_train.py --speedups: the ResNet-50 t-ReX step, eager and with the
#      fused optimiser, torch.compile and CUDA graphs (synthetic crops already on the GPU);
#   4. benchmarks/gpu_check_multicrop.py: the batched augmenter's images/s and the t-ReX step
#      fed through it, against pre-made tensors;
#   5. benchmarks/bench_core.py on the GPU (OCM memory, fused EMA vs per-parameter loop);
#   6. tests/test_cuda.py (no host sync in the training step, ...), the logistic-regression and
#      batched-decode tests on CUDA;
#   7. benchmarks/bench_logreg.py with protohead's fit on the GPU;
#   8. a one-epoch smoke run of protohead-train --gpu-aug on FakeData (ResNet-50).
#
#   bash benchmarks/gpu_check.sh                # everything
#   QUICK=1 bash benchmarks/gpu_check.sh        # steps 1-4 and the summary only
#   SKIP_SMOKE=1 bash benchmarks/gpu_check.sh   # without step 8
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log=$(mktemp)
exec > >(tee "$log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
status=0
step() {  # step TITLE TIMEOUT CMD...: run, report, keep going (one failure must not hide the rest)
    local title=$1 limit=$2; shift 2
    echo; echo "## $title"
    local begin=$SECONDS
    timeout "$limit" "$@" || { echo "FAILED ($title): exit $?"; status=1; }
    echo "($title: $((SECONDS - begin)) s)"
}
step "memory update on the GPU" 300 python benchmarks/bench_memory_ops.py --device cuda
step "decode + crops" 120 python benchmarks/bench_decode.py --device cuda --batch 64
step "t-ReX step, eager vs fused/compiled" 240 python benchmarks/gpu_check_train.py \
    --batch-size 128 --speedups
step "BatchedMultiCrop and the fed step" 270 python benchmarks/gpu_check_multicrop.py
if [ -z "${QUICK:-}" ]; then
    step "bench_core on the GPU" 90 python benchmarks/bench_core.py --device cuda --drift-updates 0
    step "CUDA tests" 150 python -m pytest -q -p no:cacheprovider -o addopts="-ra" \
        tests/test_cuda.py tests/evaluation/test_logreg.py tests/evaluation/test_lbfgs.py \
        tests/data/test_batched_decode.py
    step "bench_logreg, protohead on the GPU" 120 python benchmarks/bench_logreg.py --device cuda
    out=$(mktemp -d)
    [ -n "${SKIP_SMOKE:-}" ] || step "protohead-train --gpu-aug smoke (FakeData, resnet50)" 150 \
        python -m protohead.train --dataset fake --fake-size 1024 128 --fake-image-size 256 \
        --arch resnet50 --preset trex --gpu-aug --workers 8 --batch-size 64 --epochs 1 \
        --output-dir "$out" --print-freq 4
fi
echo
python benchmarks/gpu_summary.py "$log"
exit $status
