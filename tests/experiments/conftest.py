"""A quick `make demo` workdir (tiny world, SFT start, the clients' RMs) shared by the experiment-script tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from services.common.config import StackConfig
from services.pipeline.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run experiments/<name> as a user does, from the repository root."""
    return subprocess.run([sys.executable, f"experiments/{name}", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stack = Stack(StackConfig(workdir=tmp_path_factory.mktemp("demo") / "local"), quick=True, console=Console(quiet=True))
    stack.prepare()
    return stack.workdir
