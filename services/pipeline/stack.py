"""`mor stack up` / `mor demo`: the whole MoR system on loopback, as separate processes.

    world (generated) -> dev PKI (CA, mTLS certs, tokens) -> SFT warm start of the policy, while each
      client trains its RM on its own data (a VLM RM after the SFT: it starts from that policy)
      -> K `mor reward-node serve` processes
      -> one `mor sampler serve` -> `mor orchestrator run` -> held-out evaluation, SFT vs MoR

Every service gets a config file under <workdir>/configs/ (ports picked at start-up), logs under
<workdir>/logs/. Children are stopped on exit, on error and on Ctrl-C (SIGTERM, then SIGKILL; see
processes.py). The world, the SFT policy and each RM are reused under the pipeline's cache rule
(cache.py): the world while its config is the same; the SFT policy and each RM while their configs
and the content hashes of what they are made from (the world, the SFT policy, the node's data) are.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from services.common import certs
from services.common.config import RewardNodeSettings, RunConfig, StackConfig, load_yaml
from services.common.data.world import World
from services.common.evaluation import evaluate_policy, paired_change
from services.common.models.factory import load_vlm
from services.orchestrator.records import read_steps
from services.pipeline import cache
from services.pipeline.processes import Children, free_port, mor_command, wait_ready
from services.pipeline.reward_models import rm_inputs
from services.pipeline.sft import QUICK_POLICY, QUICK_SFT, ensure_sft
from services.pipeline.sft import REPORT as SFT_REPORT
from services.pipeline.world import ensure_world, world_config
from services.policy_sampler.client import SamplerClient
from services.reward_node.checkpoint import read_metadata
from services.reward_node.client import RewardNodeClient

QUICK_WORLD_STEPS = {"steps": 4, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8, "lr": 5e-4}
QUICK_ROUTER = {"train_steps": 60, "pairs": 48}
QUICK_RM_EPOCHS = 3
STARTUP_TIMEOUT_S = 180.0
# One RM training in flight: client, checkpoint folder, its cache inputs, log file, process.
_Training = tuple[str, Path, dict[str, Any], Path, subprocess.Popen]
ORCHESTRATOR_STOP_S = 120.0
RM_NICENESS = 10  # RMs trained beside the SFT run at this lower CPU priority


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    return path


def _quick(stack: StackConfig) -> StackConfig:
    run = stack.run.model_dump()
    run["grpo"] = {**run["grpo"], **QUICK_WORLD_STEPS}
    run["router"] = {**run["router"], **QUICK_ROUTER}
    data = stack.model_dump()
    data.update(workdir=stack.workdir / "quick", policy={**data["policy"], **QUICK_POLICY},
                sft={**data["sft"], **QUICK_SFT}, eval_examples=20, run=run,
                rm_train={**data["rm_train"], "epochs": QUICK_RM_EPOCHS})
    return StackConfig.model_validate(data)


def rm_summary(summary: dict[str, Any]) -> str:
    """One line of `mor reward-node train`'s JSON summary: held-out accuracy, and correctness per benchmark."""
    by = summary["held_out_by"]["kind_benchmark"]
    correct = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in sorted(by.items()) if k.startswith("correctness/"))
    return (f"[green]reward node {summary['node_id']}[/] held-out pair accuracy {summary['held_out_accuracy']:.3f}"
            f" (correctness pairs: {correct})")


class Stack:
    """Builds and runs the local stack; see the module docstring."""

    def __init__(self, stack: StackConfig, *, quick: bool = False, console: Console | None = None) -> None:
        self.cfg = _quick(stack) if quick else stack
        self.quick = quick
        self.console = console or Console()
        self.workdir = Path(self.cfg.workdir)
        self.certs = self.workdir / "certs"
        self.configs = self.workdir / "configs"
        self.policy_dir = self.workdir / "policy-sft"
        self.rm_training: dict[str, subprocess.Popen] = {}  # client -> its running `mor reward-node train`
        self.stage_seconds: dict[str, float] = {}  # wall time of each stage of this `up`, in order

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage into ``stage_seconds`` and say how long it took (cached stages take seconds)."""
        start = time.perf_counter()
        yield
        self.stage_seconds[name] = round(time.perf_counter() - start, 1)
        self.console.print(f"[dim]stage {name}: {self.stage_seconds[name]:.0f} s[/]")

    # ---- preparation (in process, but for the RMs) -----------------------------------------------
    def prepare_world(self) -> World:
        return ensure_world(world_config(self.cfg.world, quick=self.quick), self.workdir / "world", self.console)

    def prepare_policy(self, world: World) -> Path:
        ensure_sft(world, self.policy_dir, self.cfg.policy, self.cfg.sft, eval_examples=self.cfg.eval_examples,
                   console=self.console)
        return self.policy_dir

    def prepare_pki(self, names: list[str]) -> None:
        certs.init_ca(self.certs)
        for name in [*names, "sampler"]:
            if not certs.cert_paths(self.certs, name).cert.is_file():
                certs.issue(self.certs, name)
        if not certs.cert_paths(self.certs, "orchestrator").cert.is_file():
            certs.issue(self.certs, "orchestrator", client=True)
        for name in [*names, "sampler"]:
            if not certs.token_path(self.certs, "orchestrator", name).is_file():
                certs.issue_token(self.certs, "orchestrator", server=name)

    def node_settings(self, world: World, name: str, port: int, metrics_port: int) -> dict[str, Any]:
        spec = world.clients[name]
        return {
            "node_id": name,
            "data_dir": str(world.root),
            "model": {"kind": spec.rm_arch, "checkpoint": str(self.workdir / "rm" / name), "torch_threads": 1,
                      "backbone": {"path": str(self.policy_dir)}},
            "train": self.cfg.rm_train.model_dump(mode="json"),
            "server": {"host": "127.0.0.1", "port": port, "grace_s": 2.0},
            "tls": {"ca_cert": self.certs / "ca.pem", "cert": self.certs / f"{name}.pem",
                    "key": self.certs / f"{name}.key", "require_client_auth": True},
            "auth": {"tokens_file": self.certs / f"{name}-tokens.yaml", "allowed_callers": ["orchestrator"]},
            "metrics": {"port": metrics_port},
            "prototype": {"publish": True, "noise_sigma": 0.02},
        }

    def _start_rms(self, world: World, names: list[str], meanwhile: str = "") -> list[_Training]:
        """Start `mor reward-node train` for each of ``names`` whose RM is not current, one process each
        (with the node's torch_threads), and say so (``meanwhile``: what else runs); an RM is reused under
        the cache rule with the key of reward_models.rm_inputs (its data, training config and, for a VLM
        RM, its backbone: the SFT policy)."""
        started = []
        for name in names:
            settings = RewardNodeSettings(**yaml.safe_load((self.configs / f"node-{name}.yaml").read_text()))
            ckpt = Path(settings.model.checkpoint)
            want = rm_inputs(settings, world.root, [name])
            with contextlib.suppress(Exception):
                if cache.current(ckpt, want) and read_metadata(ckpt):  # and still a readable checkpoint
                    self.console.print(f"[green]reward node {name}[/] reusing RM {ckpt} (same data, backbone and training config)")
                    continue
            cache.begin(ckpt)
            log = self.workdir / "logs" / f"train-{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = mor_command("reward-node", "train", "--quiet", "--config", str(self.configs / f"node-{name}.yaml"))
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("wb"))
            if meanwhile:  # the server's SFT is the longer path: the RMs take the cores it leaves idle
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, proc.pid, RM_NICENESS)
            self.rm_training[name] = proc
            started.append((name, ckpt, want, log, proc))
        if started:
            self.console.print(f"[green]reward nodes {', '.join(n for n, *_ in started)}[/] grounding and training "
                               f"their RMs on their own data (one process each){meanwhile}")
        return started

    def _finish_rms(self, started: list[_Training]) -> None:
        """Wait for each training; on a failure (or Ctrl-C) the ones still running are killed."""
        try:
            self._wait_rms(started)
        except BaseException:
            self._kill(started)
            raise

    def _wait_rms(self, started: list[_Training]) -> None:
        for name, ckpt, want, log, proc in started:
            out, _ = proc.communicate()
            self.rm_training.pop(name, None)
            if proc.returncode != 0:
                raise RuntimeError(f"training the RM of {name} failed (exit {proc.returncode}); "
                                   f"log {log}:\n{log.read_text()[-3000:]}")
            cache.complete(ckpt, want)
            self.console.print(rm_summary(json.loads(out.decode().strip().splitlines()[-1])))

    def _kill(self, started: list[_Training]) -> None:
        for name, *_, proc in started:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            self.rm_training.pop(name, None)

    def train_rms(self, world: World, names: list[str], *, alongside: Callable[[], Any] | None = None) -> Any:
        """Each client trains its RM in its own process, as many at once as there are cores. With
        ``alongside`` (the server's SFT), every RM that does not start from the SFT policy (light RMs)
        trains while ``alongside()`` runs, as organisations do on their own machines; VLM RMs follow it.
        Returns what ``alongside`` returned."""
        early = [n for n in names if world.clients[n].rm_arch != "vlm"] if alongside is not None else []
        result = None
        if alongside is not None:
            started = self._start_rms(world, early, ", while the server trains its SFT start")
            try:
                result = alongside()
            except BaseException:
                self._kill(started)
                raise
            self._finish_rms(started)
        rest = [n for n in names if n not in early]
        width = max(1, os.cpu_count() or 1)
        for i in range(0, len(rest), width):
            batch = rest[i : i + width]
            started = self._start_rms(world, batch)
            self._finish_rms(started)
        return result

    def write_node_configs(self, world: World, ports: dict[str, tuple[int, int]]) -> None:
        """<configs>/node-<name>.yaml per client in ``ports`` (name -> serving port, metrics port); train_rms
        and `mor reward-node serve` read them."""
        for name, (port, metrics_port) in ports.items():
            _write_yaml(self.configs / f"node-{name}.yaml", self.node_settings(world, name, port, metrics_port))

    def prepare(self) -> tuple[World, Path, list[str], dict[str, tuple[int, int]]]:
        """Everything before the services start: world, SFT policy, PKI, service configs on free ports and
        the client RMs. Returns (world, SFT policy folder, client names, ports by service)."""
        with self.stage("world"):
            world = self.prepare_world()
        names = world.training_clients()
        self.prepare_pki(names)
        ports = {n: (free_port(), free_port()) for n in [*names, "sampler", "orchestrator"]}
        self.write_node_configs(world, {n: ports[n] for n in names})
        with self.stage("sft and client RMs"):
            policy = self.train_rms(world, names, alongside=lambda: self.prepare_policy(world))
        return world, policy, names, ports

    # ---- the run ---------------------------------------------------------------------------------
    def up(self) -> dict[str, Any]:
        world, policy, names, ports = self.prepare()
        _write_yaml(self.configs / "sampler.yaml", {
            "model": {"path": str(policy)}, "max_new_tokens": max(64, self.cfg.run.grpo.max_new_tokens),
            "hf": {"torch_threads": 1},
            "server": {"host": "127.0.0.1", "port": ports["sampler"][0], "grace_s": 2.0},
            "tls": {"cert": self.certs / "sampler.pem", "key": self.certs / "sampler.key"},
            "auth": {"tokens_file": self.certs / "sampler-tokens.yaml", "allowed_callers": ["orchestrator"]},
            "metrics": {"port": ports["sampler"][1]},
        })
        client_tls = {"ca_cert": self.certs / "ca.pem", "cert": self.certs / "orchestrator.pem",
                      "key": self.certs / "orchestrator.key"}
        run = self.cfg.run.model_dump(mode="json")
        run.update(
            world=str(world.root), output_dir=str(self.workdir / "mor"), policy={"path": str(policy)},
            # A fixed count, not "every core": the run's numbers then do not depend on the machine.
            torch_threads=self.cfg.run.torch_threads or 1,
            sampler={"address": f"127.0.0.1:{ports['sampler'][0]}", "tls": {"ca_cert": self.certs / "ca.pem"},
                     "auth": {"token_file": self.certs / "orchestrator-to-sampler.token"}, "timeout_s": 300},
            nodes=[{"node_id": n, "address": f"127.0.0.1:{ports[n][0]}", "tls": client_tls,
                    "auth": {"token_file": self.certs / f"orchestrator-to-{n}.token"}} for n in names],
        )
        run_yaml = _write_yaml(self.configs / "run.yaml", run)

        children = Children(self.workdir / "logs")
        try:
            for n in names:
                children.spawn(f"node-{n}", ["reward-node", "serve", "--config", str(self.configs / f"node-{n}.yaml")])
            children.spawn("sampler", ["sampler", "serve", "--config", str(self.configs / "sampler.yaml")])
            with self.stage("services start"):
                asyncio.run(self._wait_all(children, run_yaml))
            self.console.print(f"[green]stack[/] {len(names)} reward nodes (mTLS + tokens) and the sampler are "
                               f"serving; starting the orchestrator (logs in {children.logs})")
            orch = subprocess.Popen(mor_command("orchestrator", "run", "--config", str(run_yaml)),
                                    env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
            try:
                with self.stage("MoR run"):
                    code = orch.wait()
            except KeyboardInterrupt:
                # Ctrl-C: the orchestrator finishes its step and checkpoints (`--resume` continues).
                self.console.print("[yellow]stack[/] interrupted: the orchestrator finishes its step and checkpoints")
                with contextlib.suppress(ProcessLookupError):
                    orch.send_signal(signal.SIGINT)
                try:
                    orch.wait(ORCHESTRATOR_STOP_S)
                except subprocess.TimeoutExpired:
                    orch.kill()
                    orch.wait()
                raise
            if code != 0:
                raise RuntimeError(f"orchestrator exited with code {code}")
        finally:
            children.stop()
        return self.report(world, policy, self.workdir / "mor")

    async def _wait_all(self, children: Children, run_yaml: Path) -> None:
        run = load_yaml(RunConfig, run_yaml)
        clients = {f"node-{n.node_id}": RewardNodeClient(n, retries=0) for n in run.nodes}
        sampler = SamplerClient(run.sampler, retries=0)

        def node_check(c):
            async def check() -> bool:
                return await c.health(timeout=2) == "SERVING"
            return check

        async def sampler_check() -> bool:
            return (await sampler.get_info(timeout=2)).serving_state == "serving"

        checks = {name: node_check(c) for name, c in clients.items()}
        checks["sampler"] = sampler_check
        try:
            await wait_ready(children, checks, STARTUP_TIMEOUT_S)
        finally:
            for c in clients.values():
                await c.close()
            await sampler.close()

    # ---- results ---------------------------------------------------------------------------------
    def report(self, world: World, sft_policy: Path, run_dir: Path) -> dict[str, Any]:
        n = self.cfg.eval_examples
        self.console.print(f"[green]evaluation[/] held-out split, {n} examples per benchmark, greedy")
        with self.stage("evaluation"):
            before = _sft_evaluation(sft_policy, n) or evaluate_policy(load_vlm(sft_policy), world, per_benchmark=n,
                                                                     per_example=True)
            after = evaluate_policy(load_vlm(run_dir / "policy"), world, per_benchmark=n, per_example=True)
        steps = read_steps(run_dir / "steps.jsonl")
        report = {"before": before, "after": after, "steps": [json.loads(s.to_json()) for s in steps],
                  "router": self.cfg.run.router.kind, "workdir": str(self.workdir), "stage_seconds": self.stage_seconds}
        (self.workdir / "results.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        self.console.print(demo_table(report))
        self.console.print(f"[green]results[/] {self.workdir / 'results.json'}")
        return report


def _sft_evaluation(sft_policy: Path, n: int) -> dict[str, Any] | None:
    """The SFT's own held-out evaluation of the policy it wrote, if it is per example and on ``n`` examples
    per benchmark (SFT reports written before it kept per-example results say None: evaluate again)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        after = json.loads((sft_policy / SFT_REPORT).read_text())["after"]
        if "per_example" in after and all(b["n"] == n for b in after["benchmarks"].values()):
            return after
    return None


def demo_table(report: dict[str, Any]) -> Table:
    """SFT start vs MoR per benchmark (exact match, mean client preference) and per client (oracle
    preference). Whether a change is more than noise: each change carries its paired standard error
    over examples, and the paired column says how many answers turned right and wrong."""
    before, after = report["before"], report["after"]
    table = Table(title=f"held-out results: SFT start vs MoR ({report['router']} router, {len(report['steps'])} GRPO steps)",
                  caption="one GRPO seed: ± is the paired se over examples; the seed moves a benchmark's change "
                          "more (experiments/demo_seeds.py measures it)")
    for col in ("", "chance", "SFT start", "MoR", "change", "paired"):
        table.add_column(col, justify="right")
    paired = {b: paired_change(before, after, b) for b in after["benchmarks"]}
    for b, row in after["benchmarks"].items():
        s, m = before["benchmarks"][b]["exact_match"], row["exact_match"]
        table.add_row(f"{b} exact match", f"{row['chance']:.3f}", f"{s:.3f}", f"{m:.3f}",
                      f"{m - s:+.3f} ± {paired[b]['exact_match_se']:.3f}",
                      f"{paired[b]['turned_right']} right / {paired[b]['turned_wrong']} wrong")
    for b, row in after["benchmarks"].items():
        s, m = before["benchmarks"][b]["preference"], row["preference"]
        table.add_row(f"{b} mean client preference", "", f"{s:.3f}", f"{m:.3f}",
                      f"{m - s:+.3f} ± {paired[b]['preference_se']:.3f}", "")
    for c, m in after["client_preference"].items():
        s = before["client_preference"][c]
        table.add_row(f"{c} preference", "", f"{s:.3f}", f"{m:.3f}", f"{m - s:+.3f}", "")
    return table


__all__ = ["Stack", "demo_table", "rm_summary"]
