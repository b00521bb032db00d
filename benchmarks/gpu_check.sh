#!/usr/bin/env bash
# All GPU checks of protohead in one run (about 5 minutes on an H100, compilation included).
# Needs torch, torchvision, einops, pytest and hypothesis; nothing is installed. Prints tables:
#   1. benchmarks/gpu_check_multicrop.py (augmenter images/s, fed t-ReX step vs pre-made);
#   2. benchmarks/bench_core.py on the GPU (OCM memory, fused EMA vs per-parameter loop);
#   3. tests/test_cuda.py (no host sync in the training step, fused augmenter = eager, ...) and
#      the logistic-regression tests (GPU fit = CPU fit);
#   4. benchmarks/bench_logreg.py with protohead's fit on the GPU (scikit-learn on the CPU);
#   5. a one-epoch smoke run of protohead-train --gpu-aug on FakeData (ResNet-50);
#   6. benchmarks/bench_decode.py with the batched decode (nvJPEG) and crops on the GPU.
#
#   bash benchmarks/gpu_check.sh
#   SKIP_SMOKE=1 bash benchmarks/gpu_check.sh   # without step 5
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
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
step "BatchedMultiCrop checks" 270 python benchmarks/gpu_check_multicrop.py
step "bench_core on the GPU" 90 python benchmarks/bench_core.py --device cuda --drift-updates 0
step "CUDA tests" 120 python -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/test_cuda.py \
    tests/evaluation/test_logreg.py tests/evaluation/test_lbfgs.py tests/data/test_batched_decode.py
step "bench_logreg, protohead on the GPU" 120 python benchmarks/bench_logreg.py --device cuda
out=$(mktemp -d)
[ -n "${SKIP_SMOKE:-}" ] || step "protohead-train --gpu-aug smoke (FakeData, resnet50)" 150 protohead-train \
    --dataset fake --fake-size 1024 128 --fake-image-size 256 --arch resnet50 --preset trex \
    --gpu-aug --workers 8 --batch-size 64 --epochs 1 --output-dir "$out" --print-freq 4
step "bench_decode, batched side on the GPU" 150 python benchmarks/bench_decode.py --device cuda \
    --batch 64
exit $status
