#!/usr/bin/env bash
# On a GPU machine (Hopper): builds the extension, runs the GPU tests and the GPU benchmark
# suite, and leaves every log and result in the folder given as $1 (default: $OUT, else
# build/gpu-session). pymetis comes from a wheel in .whl/ when the machine lacks it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-build/gpu-session}}"
mkdir -p "$out"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" PYTHONUNBUFFERED=1
if ! python3 -c "import pymetis" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/pymetis-*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; exit 1; }
python3 -m pytest tests/test_triton.py -q -n 8 --junitxml="$out/tests.xml" 2>&1 | tee "$out/tests.log" | tail -15
tests=${PIPESTATUS[0]}
python3 -m bench.gpu_suite --out "$out" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
