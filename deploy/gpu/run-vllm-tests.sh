#!/usr/bin/env bash
# Run the vllm backend tests of the policy sampler on a CUDA GPU machine.
#
#   deploy/gpu/run-vllm-tests.sh            # fresh venv in .venv-vllm, install mor[dev,vllm], run the tests
#   VENV=/path/to/venv deploy/gpu/run-vllm-tests.sh
#   MOR_VLLM_TEST_DTYPE=float32 deploy/gpu/run-vllm-tests.sh   # compare log-probs at float32 tolerance
#
# vllm brings its own CUDA build of torch, so it gets a venv of its own (the CPU venv pins torch
# through deploy/constraints-cpu.txt and must not be used here). Needs network access for pip, a
# CUDA GPU with about 6 GiB free, and nvidia-smi on PATH. Exit code: pytest's.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU visible (nvidia-smi failed); the vllm backend runs on CUDA GPUs only" >&2
  exit 2
fi
nvidia-smi -L

VENV="${VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev,vllm]'
"$VENV/bin/python" - <<'PY'
import torch, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"gpu {torch.cuda.get_device_name(0)}")
PY

# The engine tests and the CPU-only helpers of the same file (cheap) run together.
exec "$VENV/bin/python" -m pytest -v -rs -p no:cacheprovider \
  tests/policy_sampler/test_vllm_backend.py "$@"
