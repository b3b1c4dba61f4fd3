#!/usr/bin/env bash
# Build MoR's CPU images: mor-cli, mor-reward-node, mor-sampler, mor-orchestrator (tag $TAG), and on
# request the GPU sampler, mor-sampler-gpu (TARGETS=sampler-gpu; deploy/docker/Dockerfile.gpu).
#
#   deploy/docker/build.sh                                   # docker (or podman when docker has no daemon)
#   ENGINE="podman --runtime runc" BASE_IMAGE=localhost/mor-base:bookworm deploy/docker/build.sh
#
# Step 1 resolves a wheelhouse on this machine with pip (`pip wheel`, CPU torch pinned by
# deploy/constraints-cpu.txt): pip must find the CPU build of torch 2.13.0, through its configured
# find-links or an extra index (e.g. PIP_EXTRA_INDEX_URL pointing at the PyTorch CPU wheel index);
# a plain PyPI torch for Linux pulls CUDA libraries of several GB. Step 2 builds every target with
# the network switched off, so nothing is downloaded inside the build and no model is baked in.
#
# Environment: ENGINE (build command), BASE_IMAGE (default python:3.11-slim; needs CPython 3.11),
# TAG (default dev), TARGETS (default "cli reward-node sampler orchestrator"; also sampler-gpu, with
# GPU_BASE_IMAGE, default python:3.12-slim), PYTHON (a 3.11
# interpreter with pip, default python3), CONTEXT (build context folder, default deploy/docker/.build),
# SKIP_WHEELS=1 (reuse the wheelhouse already in CONTEXT).
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG="${TAG:-dev}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
TARGETS="${TARGETS:-cli reward-node sampler orchestrator}"
PYTHON="${PYTHON:-python3}"
CONTEXT="${CONTEXT:-deploy/docker/.build}"
if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then ENGINE=podman
  else echo "error: neither a running docker nor podman found; set ENGINE" >&2; exit 2
  fi
fi

pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$pyver" != "3.11" ]; then
  echo "error: $PYTHON is Python $pyver; the images run CPython 3.11, so resolve the wheelhouse with a 3.11 (PYTHON=python3.11)" >&2
  exit 2
fi

if [ "${SKIP_WHEELS:-0}" != "1" ]; then
  echo "== wheelhouse ($CONTEXT/wheels)"
  rm -rf "$CONTEXT/wheels"
  mkdir -p "$CONTEXT/wheels/deps" "$CONTEXT/wheels/app"
  start=$(date +%s)
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$CONTEXT/wheels/deps" -c deploy/constraints-cpu.txt .
  mv "$CONTEXT"/wheels/deps/mor-*.whl "$CONTEXT/wheels/app/"
  if ls "$CONTEXT"/wheels/deps/ | grep -E '^(nvidia_|triton-)' >/dev/null; then
    echo "error: the wheelhouse holds CUDA wheels; point pip at the CPU build of torch (see the header of $0)" >&2
    exit 2
  fi
  echo "   $(ls "$CONTEXT/wheels/deps" | wc -l) wheels, $(du -sh "$CONTEXT/wheels" | cut -f1), $(( $(date +%s) - start )) s"
fi

format=()
case "$ENGINE" in
  *podman*) format=(--format docker) ;;  # HEALTHCHECK lives in the docker image format only
esac
for target in $TARGETS; do
  start=$(date +%s)
  if [ "$target" = sampler-gpu ]; then
    # vLLM and its CUDA wheels come from the package index: this one needs the network.
    gpu_base=()
    [ -n "${GPU_BASE_IMAGE:-}" ] && gpu_base=(--build-arg "BASE_IMAGE=$GPU_BASE_IMAGE")
    echo "== mor-sampler-gpu:$TAG"
    $ENGINE build "${format[@]}" -f deploy/docker/Dockerfile.gpu "${gpu_base[@]}" \
      --target sampler-gpu -t "mor-sampler-gpu:$TAG" "$CONTEXT"
  else
    echo "== mor-$target:$TAG (base $BASE_IMAGE)"
    $ENGINE build "${format[@]}" --network none -f deploy/docker/Dockerfile \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" --target "$target" -t "mor-$target:$TAG" "$CONTEXT"
  fi
  echo "   built in $(( $(date +%s) - start )) s"
done
