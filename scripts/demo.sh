#!/usr/bin/env bash
# Sets everything up, then runs the main job: python -m sparsekit demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m sparsekit demo "$@"
