#!/usr/bin/env bash
# Sets everything up, then runs every test: pytest (Python, ops, properties) and ctest (the
# torch-free kernels), with the CUDA ops built and linked by nvcc when nvcc is found
# (SPARSEKIT_REQUIRE_CUDA_CHECK=1 makes a missing nvcc an error).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

# CMake first: pytest loads the CUDA ops it links (tests/test_cuda_build.py).
mkdir -p build
require_cuda=OFF
[ "${SPARSEKIT_REQUIRE_CUDA_CHECK:-0}" = 1 ] && require_cuda=ON
cmake -S . -B build/cmake -DSPARSEKIT_REQUIRE_CUDA_CHECK="$require_cuda" > build/cmake.log 2>&1 \
  || { cat build/cmake.log; exit 1; }
grep 'sparsekit:' build/cmake.log
cmake --build build/cmake -j 2

python -m pytest -n 2 -q "$@"
ctest --test-dir build/cmake --output-on-failure
