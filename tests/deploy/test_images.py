"""The real thing: build the images and run the compose stack under podman (deploy/test-images.sh).

Minutes of work, root and podman needed: marked `containers`, deselected by default
(`pytest -m containers tests/deploy` runs it)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.deploy.conftest import DEPLOY


@pytest.mark.containers
@pytest.mark.timeout(3600)
def test_images_build_and_the_compose_stack_completes_a_mor_run() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None and shutil.which("podman") is None:
        pytest.skip("needs root and podman (or apt-get to install it)")
    out = subprocess.run(["bash", str(DEPLOY / "test-images.sh")], capture_output=True, text=True, timeout=3500)
    assert out.returncode == 0, out.stderr[-6000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["result"] == "ok"
    assert summary["run"]["state"] == "COMPLETED" and summary["run"]["steps_done"] == summary["run"]["total_steps"]
    assert all(v == 1.0 for v in summary["prometheus"]["up"].values())
