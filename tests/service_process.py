"""A real `mor <service> serve -c <config>` in a child process on 127.0.0.1, for the tests that need
one in its own process (the fault suite kills and restarts them; the fuzz suite bounds their RSS)."""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# The start line each `serve` command logs once it is SERVING: reward node / orchestrator
# ("... serving on 127.0.0.1:PORT") and sampler ("sampler: serving ... on port PORT").
READY_LINE = re.compile(r"serving (?:on \S+:|.* on port )(\d+)\s*$")
START_TIMEOUT_S = 240.0  # several servers import torch at once on a loaded 2-core machine
LOG_LINES_KEPT = 200


class ServerProcess:
    """``python -m services.cli <service> serve -c <config>`` in a child process.

    ``launch()`` starts it and returns at once (several servers can start side by side);
    ``wait_ready()`` waits for the start line in its log and returns the port; ``start()`` is both.
    Launched again after it died, it serves on the port it had (the config's server.port is set to
    it). ``terminate()`` sends SIGTERM (drain and exit) and returns; ``stop()`` also waits, and sends
    SIGKILL after ``grace_s``; ``kill()`` is SIGKILL at once (after SIGCONT, should it be stopped).
    A thread drains its log (stdout and stderr) into a bounded buffer: the last LOG_LINES_KEPT lines,
    for failure messages; ``starts`` counts the start lines seen over every launch."""

    def __init__(self, service: str, config: Path, env: dict[str, str] | None = None) -> None:
        self.service = service
        self.config = Path(config)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.starts = 0
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._ready = threading.Event()
        self._starts_before = 0
        self._drainer: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not launched"
        return self.proc.pid

    def launch(self) -> ServerProcess:
        if self.port:  # a restart: the same port as before
            cfg = yaml.safe_load(self.config.read_text())
            cfg["server"]["port"] = self.port
            self.config.write_text(yaml.safe_dump(cfg))
        self._ready = threading.Event()
        self._starts_before = self.starts
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", self.service, "serve", "-c", str(self.config)],
                                     cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self._drainer = threading.Thread(target=self._drain, args=(self.proc, self._ready),
                                         name=f"{self.service}-log", daemon=True)
        self._drainer.start()
        return self

    def _drain(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line.rstrip("\n")[:2000])
            m = READY_LINE.search(line)
            if m:
                self.port = int(m.group(1))
                self.starts += 1
                ready.set()
        ready.set()  # EOF: wait_ready() sees that the process ended

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> int:
        if self.proc is None:
            self.launch()
        if not self._ready.wait(timeout) or self.starts == self._starts_before:  # timed out, or ended unstarted
            self.stop()
            raise RuntimeError(f"{self.service} serve did not start (exit {self.proc.poll()}):\n{self.log_tail()}")
        return self.port

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        self.launch()
        self.wait_ready(timeout)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(list(self.log)[-n:])

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(30)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM: drain and exit) without waiting; ``stop`` waits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL when it has not exited after ``grace_s``; waits for it."""
        if self.proc is None:
            return
        self.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        if self._drainer is not None:
            self._drainer.join(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(30)


__all__ = ["READY_LINE", "ROOT", "START_TIMEOUT_S", "ServerProcess"]
