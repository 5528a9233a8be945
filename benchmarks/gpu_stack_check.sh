#!/usr/bin/env bash
# The GPU machines' software stack, checked on a CPU machine before a lease is spent on it:
# torch 2.11, torchvision 0.26 and Triton 3.6 (what the lent H100/H200 machines have, with Python
# 3.12 there) in a venv layered over the main one (.ci/layered-venv). Builds the extension against
# torch 2.11 in a clean clone of HEAD (CUDA for sm_90 when nvcc exists, as gpu_check.sh does) and
# runs the whole test suite there: on CPU, with the Triton kernels interpreted and compiled for
# sm_90 by Triton 3.6 (sm_80 is the main suite's, under Triton 3.8).
#
#   bash benchmarks/gpu_stack_check.sh [MAIN_PYTHON]   (default: python3 on the PATH)
#
# Downloads torch 2.11 (about 530 MB) through pip, so it is not part of CI. Takes about 7 minutes
# on 2 cores (build ~1 min, tests ~5 min). Found: a torch.compile zero-gradient bug that only
# torch 2.11 shows, and fp64 tl.dot accumulators that only Triton 3.6 rejects.
set -euo pipefail
main_python="${1:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
"$root/.ci/layered-venv" "$main_python" "$workdir/venv" torch==2.11.0 torchvision==0.26.0 triton==3.6.0 "numpy<2.3"
python="$workdir/venv/bin/python"
git clone --quiet "$root" "$workdir/clone"
cd "$workdir/clone"
"$python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
FORCE_CUDA="$(command -v nvcc >/dev/null && echo 1 || echo 0)" TORCH_CUDA_ARCH_LIST=9.0 \
    "$python" setup.py --quiet build_ext --inplace
# The clone comes first on the path: the main venv's editable install points at the checkout.
PYTHONPATH="$PWD" "$python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    tests --ignore=tests/test_build.py
