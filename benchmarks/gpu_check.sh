#!/usr/bin/env bash
# The GPU check: one prepared script for a lent GPU machine (no network; torch, triton and Python
# already installed there). Run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # writes benchmarks/results/<date>-<gpu>.{json,md,...}
#
# Through the device tool only files under $OUT come back (8 at most): when OUT is set, every
# result and log is also packed into $OUT/gpu-check.tar.gz, renewed after each step so that a run
# cut short still returns what it finished. Back here:
#     tar xzf <files_at>/gpu-check.tar.gz -C benchmarks/results   # then commit them
#
# Steps, each with its own time limit, none stopping the others when it fails, and all within one
# overall budget (BUDGET seconds, default 470: a step that would start later is skipped; RESULTS_DIR
# replaces benchmarks/results):
#   1. build intl_kernels._C in place against the machine's torch: C++ and CUDA operators for this
#      GPU's architecture only (faster); the C++ operators alone when no CUDA toolkit is there
#   2. correctness of every backend usable on CUDA, IterNorm and ZCA, against float64 (gpu_selftest.py)
#   3. intl-bench --preset all on CUDA (no torch.compile baseline: its compile time per case is long)
#   4. the precision study on the GPU's tensor cores: errors of each Triton product precision
#      against float64 (benchmarks/precision_study.py; on CPU it emulates them)
#   5. the square preset again with the cuda backend's Newton products as plain GEMMs
#      (INTL_KERNELS_CUDA_SYMMETRIC=0), against cuBLAS syrkx in step 3
#   6. the Triton backend with exact fp32 products (INTL_TRITON_PRECISION=ieee) on the INTL
#      ImageNet and square shapes, against the default tf32x3 in step 3
#   7. the INTL training-step benchmark (needs torchvision)
#   8. 30 steps of the demo pretraining on the GPU (bf16 autocast, channels_last): trainer img/s
#   9. the torch.compile baseline on the INTL ImageNet shape, axis 0 (the goals are judged on it)
#  10. the pytest suite when pytest is installed (the backend tests run on CUDA where it exists;
#      not the build tests: step 1 built the sources; 8 processes when pytest-xdist is there,
#      since compiling Triton kernels takes most of its time)
# The last lines printed are a short summary table.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
stamp=$(date +%Y-%m-%d)
gpu=$($python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))" 2>/dev/null || echo no-gpu)
out=${RESULTS_DIR:-benchmarks/results}
prefix="$out/$stamp-$gpu"
mkdir -p "$out"
status=()
budget=${BUDGET:-470}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember the outcome
    local name=$1 limit=$2
    shift 2
    local left=$((budget - SECONDS))
    if [ "$left" -lt 20 ]; then
        status+=("$name: skipped, the ${budget}s budget is spent")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s)"
    current=$name
    local begin=$SECONDS
    timeout "$limit" "$@" > "$prefix-$name.log" 2>&1
    local rc=$?
    tail -n 15 "$prefix-$name.log"
    status+=("$name: rc=$rc, $((SECONDS - begin))s")
    current="after $name"
    bundle
}

bundle() {  # pack the results so far for the device tool (a no-op elsewhere)
    [ -n "${OUT:-}" ] || return 0
    printf '%s\n' "${status[@]}" > "$prefix-status.txt"
    tar czf "$OUT/gpu-check.tar.gz.part" -C "$out" $(cd "$out" && ls -d "$stamp-$gpu"*) \
        && mv "$OUT/gpu-check.tar.gz.part" "$OUT/gpu-check.tar.gz"
}

# Stopped from outside (the device tool's time limit): pack what the running step left, too.
trap 'status+=("${current:-start}: stopped from outside"); bundle; exit 143' TERM INT

{
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    $python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    $python -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not importable"
} > "$prefix-versions.txt"
cat "$prefix-versions.txt"

arch=$($python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2>/dev/null || echo 9.0)
step build 200 sh -c "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch $python setup.py build_ext --inplace \
    || FORCE_CUDA=0 $python setup.py build_ext --inplace"
step selftest 60 $python benchmarks/gpu_selftest.py --device cuda --json "$prefix-selftest.json"
step bench 150 $python -m intl_kernels.bench.cli --device cuda --preset all --repeats 5 --no-compile \
    --json "$prefix.json" --csv "$prefix.csv" --plot "$prefix.png"
step precision 90 $python benchmarks/precision_study.py --device cuda --json "$prefix-precision.json"
# The cuda backend's Newton products as plain GEMMs, against the syrkx ones measured just above.
step square-gemm 40 env INTL_KERNELS_CUDA_SYMMETRIC=0 $python -m intl_kernels.bench.cli --device cuda \
    --preset square --backends cuda --repeats 5 --no-compile --json "$prefix-square-gemm.json"
step triton-ieee 60 env INTL_TRITON_PRECISION=ieee $python -m intl_kernels.bench.cli --device cuda \
    --shapes 256x8192 4096x4096 --axis 0 --backends triton --repeats 5 --no-compile \
    --json "$prefix-triton-ieee.json"
step train-step 60 $python -m intl_kernels.bench.cli --device cuda --train-step --repeats 5 \
    --json "$prefix-train-step.json"
step pretrain 60 $python -m train.pretrain --device cuda --max_steps 30 --knn_every 0 --num_workers 4 \
    --log_every 10 --output-dir "$(mktemp -d)/demo" --cache_dir "$(mktemp -d)"
step compile 90 $python -m intl_kernels.bench.cli --device cuda --preset intl-imagenet --axis 0 --repeats 10 \
    --backends torch cuda triton --json "$prefix-compile.json"
if $python -c "import pytest" 2>/dev/null; then
    # tests/test_build.py is left out: step 1 built (and so checked) the CUDA sources already.
    workers=$($python -c "import xdist" 2>/dev/null && echo "-n 8")
    step pytest 120 $python -m pytest -q $workers tests --ignore=tests/train --ignore=tests/test_build.py \
        -p no:cacheprovider
else
    status+=("pytest: skipped, pytest is not installed here")
fi

results=()
for file in "$prefix.json" "$prefix-square-gemm.json" "$prefix-triton-ieee.json" "$prefix-compile.json" \
    "$prefix-train-step.json" "$prefix-precision.json"; do
    [ -s "$file" ] && results+=("$file")
done
if [ ${#results[@]} -gt 0 ]; then
    $python benchmarks/readme_table.py "${results[@]}" > "$prefix.md" 2>> "$prefix-summary.log"
fi
echo "=== summary ($prefix.*)"
printf '%s\n' "${status[@]}"
[ -s "$prefix.md" ] && cat "$prefix.md"
bundle
exit 0
