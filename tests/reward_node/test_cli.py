"""`mor reward-node train|serve` as a user runs them: config errors, a training run, and a real
serving process that answers Score and drains on SIGTERM."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from services.cli import app
from services.cli.common import EXIT_CONFIG, EXIT_DATA
from services.reward_node.client import RewardNodeClient

ROOT = Path(__file__).resolve().parents[2]


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_writes_a_checkpoint_and_prints_held_out_accuracy(world_dir: Path, tmp_path: Path) -> None:
    cfg = _yaml(tmp_path / "bank.yaml", {
        "node_id": "school", "data_dir": str(world_dir / "clients" / "school"),
        "model": {"kind": "light", "checkpoint": str(tmp_path / "ckpt"), "torch_threads": 1},
        "train": {"max_train_pairs": 60, "batch_size": 30},
        "tls": {"insecure": True},
    })

    result = CliRunner().invoke(app, ["reward-node", "train", "--config", str(cfg), "--epochs", "2", "--quiet"])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["node_id"] == "school" and summary["kind"] == "light"
    assert 0.0 <= summary["held_out_accuracy"] <= 1.0
    assert (tmp_path / "ckpt" / "metadata.json").is_file()
    meta = json.loads((tmp_path / "ckpt" / "metadata.json").read_text())
    kinds = summary["held_out_by"]["kind"]
    assert set(kinds) == {p["kind"] for p in map(json.loads, (world_dir / "clients" / "school" / "prefs_test.jsonl")
                                                  .read_text().splitlines())}
    assert kinds["style"] == round(meta["held_out_by"]["kind"]["style"]["accuracy"], 4)
    assert "by kind and benchmark" in result.stderr and "correctness" in result.stderr


def test_train_and_serve_config_errors_exit_with_the_config_code(tmp_path: Path) -> None:
    runner = CliRunner()
    typo = _yaml(tmp_path / "typo.yaml", {"node_id": "bank", "modle": {}})
    no_data = _yaml(tmp_path / "nodata.yaml", {"node_id": "bank", "data_dir": str(tmp_path / "nowhere"),
                                               "model": {"checkpoint": str(tmp_path / "c")}})
    no_ckpt = _yaml(tmp_path / "nockpt.yaml", {"node_id": "bank", "tls": {"insecure": True}})

    typo_run = runner.invoke(app, ["reward-node", "train", "--config", str(typo)])
    data_run = runner.invoke(app, ["reward-node", "train", "--config", str(no_data)])
    serve_run = runner.invoke(app, ["reward-node", "serve", "--config", str(no_ckpt)])

    assert typo_run.exit_code == EXIT_CONFIG and "modle" in typo_run.output
    assert data_run.exit_code == EXIT_DATA and "no such folder" in data_run.output
    assert serve_run.exit_code == EXIT_CONFIG and "model.checkpoint" in serve_run.output


def test_serve_process_scores_then_drains_on_sigterm(trained_light, samples, tmp_path: Path) -> None:
    cfg = _yaml(tmp_path / "serve.yaml", {
        "node_id": "bank", "model": {"kind": "light", "checkpoint": str(trained_light.checkpoint), "torch_threads": 1},
        "tls": {"insecure": True}, "metrics": {"enabled": False},
    })
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "reward-node", "serve", "--config", str(cfg)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port, lines, deadline = None, [], time.monotonic() + 90
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if "serving on" in line:
                port = int(re.search(r":(\d+)\s*$", line).group(1))
        assert port is not None, "".join(lines)
        s = samples[0]

        async def call():
            async with RewardNodeClient.connect(f"127.0.0.1:{port}", insecure=True, retries=0) as client:
                return await client.score(s.question, s.answers, s.image_png, timeout=30)

        reply = asyncio.run(call())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        rest = proc.stderr.read()
        proc.stderr.close()

    assert len(reply.scores) == 2 and reply.model_version == trained_light.metadata["model_version"]
    assert code == 0, rest
    assert "draining" in rest
