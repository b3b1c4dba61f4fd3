"""deploy/docker: the Dockerfiles' contract (base image argument, non-root, grpc.health.v1 health
checks, offline build). The images themselves are built and run by deploy/test-images.sh."""
from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import DEPLOY

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
GPU_DOCKERFILE = DEPLOY / "docker" / "Dockerfile.gpu"


def stages(text: str) -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM\s+", text, flags=re.M)
    out = {}
    for part in parts[1:]:
        header, _, body = part.partition("\n")
        name = header.split(" AS ")[-1].strip() if " AS " in header else header.strip()
        out[name] = body
    return out


@pytest.mark.parametrize("path", [DOCKERFILE, GPU_DOCKERFILE], ids=["cpu", "gpu"])
def test_base_image_is_a_build_argument_with_a_public_default(path) -> None:
    text = path.read_text()
    first_from = text.index("\nFROM ")
    arg = re.search(r"^ARG BASE_IMAGE=(\S+)$", text[:first_from], flags=re.M)
    assert arg, "ARG BASE_IMAGE=... must come before the first FROM"
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", arg.group(1))
    assert re.findall(r"^FROM \$\{BASE_IMAGE\}", text, flags=re.M)


@pytest.mark.parametrize("path", [DOCKERFILE, GPU_DOCKERFILE], ids=["cpu", "gpu"])
def test_runs_as_a_non_root_user_without_downloads(path) -> None:
    text = path.read_text()
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and all(u.split(":")[0] not in ("0", "root") for u in users)
    assert not re.search(r"\b(curl|wget|huggingface-cli|snapshot_download|from_pretrained)\b", text)
    assert "HF_HUB_OFFLINE=1" in text


def test_cpu_image_installs_only_the_wheelhouse() -> None:
    text = DOCKERFILE.read_text()
    for line in re.findall(r"pip install[^\n\\]*", text):
        assert "--no-index" in line, line
    assert "--network none" in (DEPLOY / "docker" / "build.sh").read_text()


@pytest.mark.parametrize("target, kind, port", [
    ("reward-node", "reward-node", 50051),
    ("sampler", "sampler", 50061),
    ("orchestrator", "orchestrator", 50071),
])
def test_service_targets_check_grpc_health(target: str, kind: str, port: int) -> None:
    stage = stages(DOCKERFILE.read_text())[target]
    assert f"MOR_SERVICE={kind}" in stage
    assert re.search(r"HEALTHCHECK .*\n\s+CMD python -m services.common.grpc.healthcheck", stage)
    assert f"EXPOSE {port}" in stage
    assert re.search(rf'^CMD \["{kind}", "serve"', stage, flags=re.M)


def test_gpu_image_is_the_sampler_with_vllm() -> None:
    text = GPU_DOCKERFILE.read_text()
    assert "[vllm]" in text
    assert "services.common.grpc.healthcheck" in text
    assert re.search(r'^CMD \["sampler", "serve"', text, flags=re.M)
