"""The `mor` command line as a user runs it: real processes, real files, exit codes and messages."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.evaluation import paired_change

ROOT = Path(__file__).resolve().parents[2]


def mor(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_data_make_is_byte_deterministic_and_seed_sensitive(tmp_path):
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        proc = mor("data", "make", "--quick", "--seed", seed, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr

    a, b, c = (tree_digest(tmp_path / n) for n in "abc")
    assert len(a) > 100
    assert a == b
    assert a != c


def test_data_make_refuses_to_overwrite_without_force(tmp_path):
    assert mor("data", "make", "--quick", "--out", str(tmp_path / "w")).returncode == 0

    again = mor("data", "make", "--quick", "--out", str(tmp_path / "w"))
    forced = mor("data", "make", "--quick", "--force", "--out", str(tmp_path / "w"))

    assert again.returncode == 3 and "--force" in again.stderr and "Traceback" not in again.stderr
    assert forced.returncode == 0


def test_data_info_on_a_world_and_on_a_wrong_folder(tmp_path):
    assert mor("data", "make", "--quick", "--out", str(tmp_path / "w")).returncode == 0

    info = mor("data", "info", str(tmp_path / "w"))
    bad = mor("data", "info", str(tmp_path))

    assert info.returncode == 0 and "clinic" in info.stdout and "router pairs" in info.stdout
    assert bad.returncode == 3 and "not a MoR world" in bad.stderr


def test_config_check_names_bad_field_with_distinct_exit_code(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("grpo:\n  loss_type: ppo\n")

    proc = mor("config", "check", "run", str(bad))

    assert proc.returncode == 2
    assert "grpo.loss_type" in proc.stderr and "'dr_grpo'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_check_prints_redacted_config(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("nodes:\n  - {node_id: a, address: '127.0.0.1:1', auth: {token: hunter2}}\n")

    proc = mor("config", "check", "run", str(cfg))

    assert proc.returncode == 0, proc.stderr
    dumped = json.loads(proc.stdout)
    assert dumped["nodes"][0]["auth"]["token"] == "**********"
    assert "hunter2" not in proc.stdout


def test_config_show_lists_documented_fields():
    proc = mor("config", "show", "reward-node")

    assert proc.returncode == 0
    assert "batching.max_wait_ms" in proc.stdout and "RESOURCE_EXHAUSTED" in proc.stdout


def test_unknown_config_kind_and_bad_preset_are_clear_errors(tmp_path):
    kind = mor("config", "show", "gateway")
    preset = mor("sft", "--world", str(tmp_path), "--preset", "huge")

    assert kind.returncode == 2 and "reward-node" in kind.stderr
    assert preset.returncode == 2 and "preset" in preset.stderr and "'tiny'" in preset.stderr


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text(f"workdir: {tmp_path / 'local'}\n")

    proc = mor("demo", "--quick", "--config", str(stack))

    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "local" / "quick" / "results.json").read_text())
    assert set(results["after"]["benchmarks"]) == {"shapes", "digits", "charts"}
    assert set(results["before"]["benchmarks"]) == {"shapes", "digits", "charts"}
    assert (tmp_path / "local" / "quick" / "policy-sft" / "config.json").is_file()
    assert [s["step"] for s in results["steps"]] == [1, 2, 3, 4]  # the orchestrator ran every step
    stages = results["stage_seconds"]
    assert set(stages) == {"world", "sft and client RMs", "services start", "MoR run", "evaluation"}
    assert all(t >= 0 for t in stages.values()) and stages["MoR run"] > 0
    assert "stage MoR run:" in proc.stdout
    sft_report = json.loads((tmp_path / "local" / "quick" / "policy-sft" / "sft_report.json").read_text())
    assert results["before"]["per_example"] == sft_report["after"]["per_example"]  # the start, evaluated once
    assert all(n["responded"] for s in results["steps"] for n in s["nodes"])  # over mTLS + tokens
    logs = tmp_path / "local" / "quick" / "logs"
    assert {p.name for p in logs.glob("*.log")} >= {"sampler.log", "node-clinic.log", "node-bank.log"}
    assert "SFT start vs MoR" in proc.stdout
    assert "digits mean client preference" in proc.stdout
    for b in results["after"]["benchmarks"]:  # the paired column, from the per-example results
        change = paired_change(results["before"], results["after"], b)
        assert f"{change['turned_right']} right / {change['turned_wrong']} wrong" in proc.stdout


def test_certs_make_a_ca_certs_and_a_token(tmp_path):
    d = str(tmp_path / "certs")

    steps = [mor("certs", "init", "-d", d), mor("certs", "issue", "clinic", "-d", d),
             mor("certs", "issue", "orchestrator", "--client", "-d", d),
             mor("certs", "token", "orchestrator", "--server", "clinic", "-d", d)]
    bad = mor("certs", "issue", "../escape", "-d", d)

    assert [p.returncode for p in steps] == [0, 0, 0, 0], [p.stderr for p in steps]
    token_file = Path(steps[-1].stdout.strip())
    assert token_file.name == "orchestrator-to-clinic.token" and len(token_file.read_text().strip()) >= 32
    assert token_file.read_text().strip() not in (tmp_path / "certs" / "clinic-tokens.yaml").read_text()
    assert bad.returncode == 2 and "must match" in bad.stderr


def test_orchestrator_run_errors_are_one_line_without_traceback(tmp_path):
    from services.common.data import WorldConfig, make_world

    missing = tmp_path / "no-world.yaml"
    missing.write_text(f"world: {tmp_path / 'nowhere'}\noutput_dir: {tmp_path / 'out'}\n")
    world = tmp_path / "world"
    make_world(WorldConfig.small(seed=1), world)
    no_sampler = tmp_path / "no-sampler.yaml"
    no_sampler.write_text(f"world: {world}\noutput_dir: {tmp_path / 'out2'}\n"
                          "sampler: {address: '127.0.0.1:9', tls: {insecure: true}, timeout_s: 2}\n"
                          "nodes: [{node_id: a, address: '127.0.0.1:9', tls: {insecure: true}}]\n")

    no_world = mor("orchestrator", "run", "--config", str(missing), "--quiet")
    down = mor("orchestrator", "run", "--config", str(no_sampler), "--quiet")

    assert no_world.returncode == 3 and "is not a MoR world" in no_world.stderr
    assert down.returncode == 4 and "sampler at 127.0.0.1:9" in down.stderr and "UNAVAILABLE" in down.stderr
    assert "Traceback" not in no_world.stderr + down.stderr


def test_orchestrator_run_says_which_side_refused_tls(tmp_path):
    """A sampler demanding a client certificate the run config does not give: before, the CLI
    said only 'UNAVAILABLE: ... Socket closed' (issue 18, item 9)."""
    import asyncio

    from services.common import certs
    from services.common.config import ServerSection, TLSSection
    from services.common.data import WorldConfig, make_world
    from services.common.grpc import GrpcService, service_name
    from services.common.wire import policy_sampler_pb2, policy_sampler_pb2_grpc

    pki = tmp_path / "pki"
    certs.init_ca(pki)
    certs.issue(pki, "sampler")
    world = tmp_path / "world"
    make_world(WorldConfig.small(seed=1), world)

    async def scenario():
        sampler = GrpcService("sampler", server=ServerSection(port=0, grace_s=0.5), tls=TLSSection(
            ca_cert=pki / "ca.pem", cert=pki / "sampler.pem", key=pki / "sampler.key", require_client_auth=True))
        sampler.add_servicer(policy_sampler_pb2_grpc.add_PolicySamplerServicer_to_server,
                             policy_sampler_pb2_grpc.PolicySamplerServicer(),
                             service_name(policy_sampler_pb2, "PolicySampler"))
        await sampler.start()
        await sampler.set_ready()
        try:
            run = tmp_path / "run.yaml"
            run.write_text(f"world: {world}\noutput_dir: {tmp_path / 'out'}\n"
                           f"sampler: {{address: '{sampler.address}', tls: {{ca_cert: {pki / 'ca.pem'}}}, timeout_s: 5}}\n"
                           "nodes: [{node_id: a, address: '127.0.0.1:9', tls: {insecure: true}}]\n")
            return await asyncio.to_thread(mor, "orchestrator", "run", "--config", str(run), "--quiet")
        finally:
            await sampler.stop(0)

    refused = asyncio.run(scenario())

    said = " ".join(refused.stderr.split())  # the console wraps long lines
    assert refused.returncode == 4
    assert "TLS handshake with 127.0.0.1:" in said
    assert "the server refused this client: it requires a client certificate (mutual TLS) and none was sent" in said
    assert "Traceback" not in said


def test_ctrl_c_stops_every_process_of_the_stack(tmp_path):
    import signal
    import time

    import psutil

    stack = tmp_path / "stack.yaml"
    stack.write_text(f"workdir: {tmp_path / 'local'}\n")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    # A test runner started in the background (`cmd &` without job control) ignores SIGINT, and a
    # Python child that starts with SIGINT ignored keeps ignoring it: give the stack a terminal's default.
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "stack", "up", "--quick", "--config", str(stack)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = ""
        deadline = time.monotonic() + 300
        # Ctrl-C once the orchestrator child is up (it prints "policy: loading" before its first step).
        while "policy: loading" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stdout.readline()
        assert "starting the" in seen and "policy: loading" in seen, seen[-2000:]
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(children) >= 5  # 4 reward nodes (the quick world has a noisy client too) + sampler (+ orchestrator)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (seen + out)[-3000:]
    assert "interrupted" in out
    time.sleep(0.5)
    assert not [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
