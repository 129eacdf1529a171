#!/usr/bin/env bash
# The GPU session in one command (bench/gpu_session.py: phases, budgets, results):
#
#   bash scripts/gpu_session.sh prepare      # here: puts the wheels the GPU machine lacks in .whl/
#                                            # (pymetis from ../shared/device-wheels, nvidia-cutlass
#                                            # for the CUDA kernels' headers)
#   bash scripts/gpu_session.sh --dry-run    # here: the phases, their budgets, the call to make
#   bash scripts/gpu_session.sh [OUT]        # there: build, GPU tests, sanitizer, benchmarks in at
#                                            # most 8 minutes; results in OUT (else $OUT)
#   bash scripts/gpu_session.sh --only PHASE [PHASE ...] [OUT]   # some phases, on a warm machine
#
# DEVELOPING.md says how to run it, what comes back and how to read it.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = prepare ]; then
  mkdir -p .whl && cp ../shared/device-wheels/*.whl .whl/
  python3 -m pip download --quiet --no-deps --dest .whl nvidia-cutlass==4.2.0.0 && ls .whl
  exit
fi
exec python3 -m bench.gpu_session "$@"
