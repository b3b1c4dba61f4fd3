#!/usr/bin/env bash
# GPU checks of the orchestrator and sampler on a CUDA machine whose python already has torch,
# transformers and peft (no network there): the missing pure-Python/grpc wheels come in WHEELS.
#
#   WHEELS=.whl OUT=/tmp/out deploy/gpu/run-gpu-checks.sh
#
# 1. the orchestrator end-to-end tests with the trainer's and the sampler's policy on cuda
# 2. benchmarks/grpo_step.py (MoR vs TRL, one GRPO step) with the policies on the GPU, then on the
#    machine's CPU with 4 threads per process (an idle-machine comparison)
set -uo pipefail
cd "$(dirname "$0")/../.."
WHEELS="${WHEELS:-.whl}"
OUT="${OUT:-/tmp/mor-gpu}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 2
export PYTHONPATH="/tmp/site:$PWD/$WHEELS/shim:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, grpc; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'grpcio', grpc.__version__)" | tee -a "$OUT/gpu.txt"
MOR_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -rs tests/integration/test_orchestrator_e2e.py 2>&1 | tee "$OUT/e2e-cuda.log"
rc=${PIPESTATUS[0]}
timeout 240 python3 benchmarks/grpo_step.py --device cuda --steps 10 2>&1 | tee "$OUT/grpo_step-cuda.log"
timeout 200 python3 benchmarks/grpo_step.py --device cpu --threads 4 --steps 10 2>&1 | tee "$OUT/grpo_step-cpu4.log"
exit "$rc"
