"""The local stack's child processes: `mor` sub-commands spawned with their logs, polled until they
serve, and stopped together (SIGTERM to each process group, then SIGKILL)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning; children read no model hub; logs are written as they come.
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mor_command(*args: str) -> list[str]:
    """The command line of `mor <args>` in this interpreter."""
    return [sys.executable, "-m", "services.cli", *args]


class Children:
    """Child processes of the stack, stopped together."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("w")
        self._logs.append(log)
        proc = subprocess.Popen(mor_command(*args), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **CHILD_ENV}, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.is_file() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")

    def stop(self, grace_s: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self._logs:
            log.close()


async def wait_ready(children: Children, checks: dict[str, Callable[[], Awaitable[bool]]], timeout_s: float) -> None:
    """Poll every service's health until SERVING; fail early when a child dies."""
    pending = dict(checks)
    deadline = time.monotonic() + timeout_s
    while pending:
        children.check_alive()
        for name, check in list(pending.items()):
            with contextlib.suppress(Exception):
                if await check():
                    del pending[name]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout_s:.0f}s: {', '.join(pending)}")
        if pending:
            await asyncio.sleep(0.5)


__all__ = ["CHILD_ENV", "Children", "free_port", "mor_command", "wait_ready"]
