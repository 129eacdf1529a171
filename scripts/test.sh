#!/usr/bin/env bash
# Sets everything up, then runs every test: pytest (Python, ops, properties) and ctest (the
# torch-free kernels), with the CUDA ops built and linked by nvcc when nvcc is found
# (SPARSEKIT_REQUIRE_CUDA_CHECK=1 makes a missing nvcc an error). Both suites run whatever the
# other's result; the last line gives each one's result, and the script fails when either does.
# Build output goes to build/*.log, shown when a build fails.
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
# nvcc prints every kernel's registers and spills (a spill fails the build): kept in the log
cmake --build build/cmake -j 2 > build/cmake-build.log 2>&1 || { cat build/cmake-build.log; exit 1; }

pytest_rc=0
python -m pytest -n 2 -q "$@" || pytest_rc=$?
ctest_rc=0
ctest --test-dir build/cmake --output-on-failure || ctest_rc=$?

result() { [ "$1" = 0 ] && echo passed || echo "failed (exit $1)"; }
echo "sparsekit: pytest: $(result "$pytest_rc"), ctest: $(result "$ctest_rc")"
# pytest's exit code when it failed, else 1 when ctest failed
status=$pytest_rc
[ "$status" = 0 ] && [ "$ctest_rc" != 0 ] && status=1
exit "$status"
