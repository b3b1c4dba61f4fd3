"""A real Prometheus server (Debian's package) on 127.0.0.1 scrapes a running reward node.

The node runs in-process on 127.0.0.1:0 with a fake reward model and its metrics side port on
another free port; Prometheus gets a temporary config and data folder, the MoR rules, a 1 s scrape
interval, and is stopped at the end of the test. After N Score calls, the query for the node's
request counter must return exactly N more than before.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from services.common import metrics
from services.common.config import RewardNodeSettings
from services.reward_node.app import build_app
from services.reward_node.checkpoint import LoadedRM
from services.reward_node.client import RewardNodeClient
from services.reward_node.rm.base import RewardModel
from tests.deploy.conftest import DASHBOARD, RULES

N_REQUESTS = 7
TIMEOUT_S = 60.0


class LengthRM(RewardModel):
    """score = characters in the response; no weights, instant."""

    kind = "light"

    def prepare(self, prompts: Sequence[str], images: Sequence[Any], responses: Sequence[str]) -> Any:
        return list(responses)

    def raw_scores(self, prepared: Any) -> torch.Tensor:
        return torch.tensor([float(len(r)) for r in prepared])

    def architecture(self) -> dict[str, Any]:
        return {"kind": "light"}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], checkpoint_dir: Path | None = None) -> LengthRM:
        return cls()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def score_total() -> float:
    """This process's mor_grpc_server_requests_total for Score, all codes summed."""
    total = 0.0
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "mor_grpc_server_requests_total" and sample.labels.get("method") == "Score":
                total += sample.value
    return total


class PromAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 400 for a bad query: the body says why
            return json.loads(err.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as resp:  # noqa: S310
                return resp.status == 200
        except OSError:
            return False

    def scalar(self, query: str) -> float | None:
        body = self.get("/api/v1/query", query=query)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None


@contextlib.contextmanager
def prometheus(binary: str, tmp: Path, metrics_port: int):
    """Prometheus on 127.0.0.1:<free port> scraping 127.0.0.1:<metrics_port> every second."""
    shutil.copy(RULES, tmp / RULES.name)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES.name],
        "scrape_configs": [{
            "job_name": "mor-reward-node",
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"node_id": "bank"}}],
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", "--storage.tsdb.retention.time=1h"],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "wb"),  # noqa: SIM115
        env={**os.environ, "GOMAXPROCS": "1"},
    )
    try:
        api = PromAPI(port)
        deadline = time.monotonic() + 30
        while not api.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready: {(tmp / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def poll(fn, until, timeout_s: float = 30.0):
    """Call fn() (in a thread) until until(value) or the timeout; return the last value."""
    deadline = time.monotonic() + timeout_s
    value = await asyncio.to_thread(fn)
    while not until(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        value = await asyncio.to_thread(fn)
    return value


def test_prometheus_scrapes_the_request_counter_of_a_running_node(prometheus_bin: str, tmp_path: Path) -> None:
    settings = RewardNodeSettings(
        node_id="bank", tls={"insecure": True},
        server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
        metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
        model={"kind": "light", "torch_threads": 1},
    )
    loaded = LoadedRM(LengthRM(), {"model_version": "len-1", "kind": "light", "score_mean": 0.0, "score_std": 1.0}, None)

    async def scenario() -> dict[str, Any]:
        app = build_app(settings, loaded=loaded)
        await app.start()
        try:
            metrics_port = app.service.metrics_port
            assert metrics_port
            with prometheus(prometheus_bin, tmp_path, metrics_port) as api:
                up = await poll(lambda: api.scalar('up{job="mor-reward-node",node_id="bank"}'), lambda v: v == 1.0)
                before = score_total()
                query = 'sum(mor_grpc_server_requests_total{job="mor-reward-node",method="Score"})'
                client = RewardNodeClient.connect(f"127.0.0.1:{app.port}", insecure=True, retries=0)
                try:
                    # Two waves, each seen by a scrape, so the counter also has a rate for the rules.
                    first = 2
                    for i in range(N_REQUESTS):
                        if i == first:
                            await poll(lambda: api.scalar(query), lambda v: v == before + first)
                        reply = await client.score(f"prompt {i}", ["a", "bb", "ccc"])
                        assert len(reply.scores) == 3
                finally:
                    await client.close()
                expected = before + N_REQUESTS
                scraped = await poll(lambda: api.scalar(query), lambda v: v == expected)
                by_code = await asyncio.to_thread(
                    api.get, "/api/v1/query",
                    query='mor_grpc_server_requests_total{job="mor-reward-node",method="Score",code="OK"}')
                recorded = await poll(lambda: api.scalar('sum(mor:grpc_server_requests:rate5m{method="Score"})'),
                                      lambda v: v is not None and v > 0)
                dashboard_errors = await asyncio.to_thread(dashboard_query_errors, api)
                return {"up": up, "before": before, "expected": expected, "scraped": scraped, "by_code": by_code,
                        "recorded": recorded, "dashboard_errors": dashboard_errors}
        finally:
            await app.stop(0)

    result = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S))
    assert result["up"] == 1.0
    assert result["scraped"] == result["expected"], (
        f"Prometheus saw {result['scraped']} Score requests, the node served {result['expected']}")
    series = result["by_code"]["data"]["result"]
    assert len(series) == 1 and series[0]["metric"]["service"] == "mor.v1.RewardNode"
    assert result["recorded"] is not None and result["recorded"] > 0, "the recording rules did not evaluate"
    assert result["dashboard_errors"] == []


def dashboard_query_errors(api: PromAPI) -> list[str]:
    """Every query of the Grafana dashboard, sent to the real PromQL parser."""
    errors = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            body = api.get("/api/v1/query", query=target["expr"])
            if body.get("status") != "success":
                errors.append(f"{panel['title']}: {body.get('error')}")
    return errors
