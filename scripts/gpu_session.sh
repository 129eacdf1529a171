#!/usr/bin/env bash
# The GPU steps, one per call of a machine that gives each command 10 minutes:
#
#   bash scripts/gpu_session.sh prepare          # here: puts the wheels the GPU machine lacks in
#                                                # .whl/ (pymetis from ../shared/device-wheels,
#                                                # nvidia-cutlass for the CUDA kernels' headers)
#   bash scripts/gpu_session.sh build [OUT]      # there: installs them into build/site, builds
#   bash scripts/gpu_session.sh test [OUT]       #   the GPU tests (Triton, the cuda backend
#                                                #   against fp64 references, CUDA graph capture)
#   bash scripts/gpu_session.sh sanitize [OUT]   #   compute-sanitizer memcheck and racecheck on
#                                                #   the cuda backend's small cases
#   bash scripts/gpu_session.sh bench PART [OUT] #   one part of bench.gpu_suite: bfloat16, float32,
#                                                #   tf32, linear or models (SPARSEKIT_BENCH_ALSO=cuda
#                                                #   times the cuda backend too)
#
# Logs and results go to OUT (default: $OUT, else build/gpu-session). Compiled Triton kernels
# are cached in build/triton-cache, so later steps on the same machine reuse them.
set -uo pipefail
cd "$(dirname "$0")/.."
step="${1:-}"
shift || true
if [ "$step" = prepare ]; then
  mkdir -p .whl && cp ../shared/device-wheels/*.whl .whl/
  python3 -m pip download --quiet --no-deps --dest .whl nvidia-cutlass==4.2.0.0 && ls .whl
  exit
fi
part=""
if [ "$step" = bench ]; then part="${1:?bench needs a part: bfloat16, float32, tf32, linear or models}"; shift; fi
out="${1:-${OUT:-build/gpu-session}}"
mkdir -p "$out" build
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="$PWD/build/triton-cache" PYTHONPATH="$PWD/build/site${PYTHONPATH:+:$PYTHONPATH}"
if [ "$step" = test ] || [ "$step" = sanitize ] || [ "$step" = bench ]; then
  python3 -c "import sparsekit.triton_kernels" 2>/dev/null \
    || { echo "sparsekit is not built on this machine: run the build step first"; exit 1; }
fi
case "$step" in
  build)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
    for wheel in pymetis nvidia_cutlass; do
      [ -e "build/site/.$wheel" ] && continue
      python3 -m pip install -q --no-index --no-deps --no-compile --target build/site .whl/$wheel-*.whl \
        || { echo "$wheel: run 'bash scripts/gpu_session.sh prepare' here and carry .whl"; exit 1; }
      touch "build/site/.$wheel"
    done
    python3 -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 \
      || { tail -40 "$out/build.log"; exit 1; }
    python3 -c "import sparsekit, pymetis; print('sparsekit', sparsekit.__version__, 'ready')"
    ;;
  test)
    python3 -m pytest tests/test_triton.py tests/test_cuda_backend.py tests/test_graph_capture.py -q -n 8 \
      --junitxml="$out/tests.xml" 2>&1 \
      | tee "$out/tests.log" | tail -15
    exit "${PIPESTATUS[0]}"
    ;;
  sanitize)
    sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
    status=0
    for tool in memcheck racecheck; do
      "$sanitizer" --tool "$tool" --error-exitcode 1 python3 -m pytest tests/test_cuda_backend.py -q -x \
        -k "(bfloat16 or float32) and not 130" > "$out/sanitize-$tool.log" 2>&1 || status=1
      tail -5 "$out/sanitize-$tool.log"
    done
    exit "$status"
    ;;
  bench)
    python3 -m bench.gpu_suite --part "$part" --out "$out" 2>&1 | tee "$out/bench-$part.log"
    exit "${PIPESTATUS[0]}"
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
