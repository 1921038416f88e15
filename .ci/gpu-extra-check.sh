#!/usr/bin/env bash
# CI (optional job): install the 'gpu' extra (cuML + CuPy, ~6.4 GB) into a separate,
# temporary venv and check, without a GPU, that it imports, that every keyword the cuML
# adapter passes exists in the installed cuML, and that `cluster --device gpu` fails
# with one clear line. Takes several minutes; .ci/run runs it after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/check_gpu_extra.py "$@"
