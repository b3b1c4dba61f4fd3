"""The sampler's life cycle: not serving while loading, metrics, graceful drain, and `mor sampler serve`
as a real process (start, answer, SIGTERM, exit 0; bad config -> exit 2)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import metrics
from services.policy_sampler.app import SamplerApp
from services.policy_sampler.backends.hf import HFBackend
from services.policy_sampler.client import SamplerClient, SamplerPrompt

ROOT = Path(__file__).resolve().parents[2]


class SlowLoadingBackend(HFBackend):
    """The hf backend whose load waits for `release` (to observe the loading state)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def load(self):
        await self.release.wait()
        return await super().load()


def test_not_serving_until_the_policy_is_loaded(arun, tools) -> None:
    cfg = tools.settings()

    async def scenario():
        backend = SlowLoadingBackend(cfg.model, cfg.hf)
        app = SamplerApp(cfg, backend)
        starting = asyncio.ensure_future(app.start())
        while app.service._port is None:  # bound, loading
            await asyncio.sleep(0.01)
        async with SamplerClient(tools.endpoint(app.service.port), retries=0) as client:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.service.port}") as ch:
                health = health_pb2_grpc.HealthStub(ch)
                loading = (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
                info_loading = (await client.get_info()).serving_state
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await client.generate([SamplerPrompt("p", "q")], 2)
                backend.release.set()
                await starting
                ready = (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
                info_ready = (await client.get_info()).serving_state
        await app.stop(0)
        return loading, info_loading, err.value.code(), ready, info_ready

    loading, info_loading, code, ready, info_ready = arun(scenario())

    assert loading == health_pb2.HealthCheckResponse.NOT_SERVING and info_loading == "loading"
    assert code == grpc.StatusCode.UNAVAILABLE
    assert ready == health_pb2.HealthCheckResponse.SERVING and info_ready == "serving"


def test_metrics_count_tokens_batches_versions_and_updates(serve, arun, tools) -> None:
    def value(name: str, labels: dict | None = None) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0

    before = {
        "tokens": value("mor_sampler_generated_tokens_total"),
        "batches": value("mor_sampler_batch_size_samples_count"),
        "ok": value("mor_sampler_weight_update_requests_total", {"code": "OK"}),
        "stale": value("mor_sampler_weight_update_requests_total", {"code": "FAILED_PRECONDITION"}),
        "swaps": value("mor_sampler_weight_update_seconds_count"),
    }
    policy = tools.lora_policy()

    async def scenario():
        async with serve() as running:
            result = await running.client.generate([SamplerPrompt("p", "q")], 3, seed=0)
            await running.client.push_peft_model(2, policy.model)
            with pytest.raises(grpc.aio.AioRpcError):
                await running.client.push_peft_model(1, policy.model)
            return sum(len(s.token_ids) for g in result.groups for s in g)

    tokens = arun(scenario())

    assert value("mor_sampler_generated_tokens_total") - before["tokens"] == tokens
    assert value("mor_sampler_batch_size_samples_count") - before["batches"] == 1
    assert value("mor_sampler_policy_version") == 2
    assert value("mor_sampler_weight_update_requests_total", {"code": "OK"}) - before["ok"] == 1
    assert value("mor_sampler_weight_update_requests_total", {"code": "FAILED_PRECONDITION"}) - before["stale"] == 1
    assert value("mor_sampler_weight_update_seconds_count") - before["swaps"] == 1
    assert value("mor_sampler_queue_depth_samples") == 0


def test_graceful_stop_finishes_in_flight_generation(arun, tools) -> None:
    cfg = tools.settings(server={"grace_s": 20.0})

    async def scenario():
        app = SamplerApp(cfg, HFBackend(cfg.model, cfg.hf))
        await app.start()
        async with SamplerClient(tools.endpoint(app.port), retries=0) as client:
            prompts = [SamplerPrompt(str(i), "Describe the picture in many words.") for i in range(4)]
            running = asyncio.ensure_future(client.generate(prompts, 4, max_new_tokens=8, seed=1))
            await asyncio.sleep(0.05)
            stopping = asyncio.ensure_future(app.stop())
            result = await running
            await stopping
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.get_info(timeout=2)
        return [len(g) for g in result.groups], err.value.code()

    sizes, code = arun(scenario())

    assert sizes == [4, 4, 4, 4]
    assert code == grpc.StatusCode.UNAVAILABLE


def _write_config(tmp_path: Path, **extra) -> Path:
    cfg = {
        "model": {"preset": "tiny"},
        "tls": {"insecure": True},
        "metrics": {"enabled": False},
        "hf": {"torch_threads": 1},
        "server": {"host": "127.0.0.1", "port": 0, "grace_s": 2},
        **extra,
    }
    path = tmp_path / "sampler.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_serve_runs_until_sigterm(tmp_path, arun, tools) -> None:
    path = _write_config(tmp_path)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "sampler", "serve", "--config", str(path)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port, lines, deadline = None, [], time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"gRPC on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            if "ready (SERVING)" in line:
                break
        assert port, "".join(lines)

        async def ask():
            async with SamplerClient(tools.endpoint(port), retries=0) as client:
                return await client.get_info()

        info = arun(ask())
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert info.serving_state == "serving" and info.model_name == "qwen2_vl-tiny"
    assert proc.returncode == 0, rest
    assert "draining" in rest


@pytest.mark.parametrize(
    ("extra", "words"),
    [({"backend": "tensorrt"}, "backend"), ({"tls": {}}, "tls.cert")],
    ids=["bad-field", "tls-without-cert"],
)
def test_cli_serve_refuses_bad_config_with_exit_2(tmp_path, extra, words) -> None:
    path = _write_config(tmp_path, **extra)

    proc = subprocess.run([sys.executable, "-m", "services.cli", "sampler", "serve", "--config", str(path)],
                          cwd=ROOT, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=120)

    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
