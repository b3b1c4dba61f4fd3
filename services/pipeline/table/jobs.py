"""One job of the table: a GRPO run of one method and seed against real reward nodes, then evaluation.

The nodes are the real gRPC service (``build_app(settings).start()`` on 127.0.0.1:0, in this
process, stopped when the run ends); the policy samples in process (``RunConfig.sampler = None``),
so a job is one process. A job's run folder is an artefact of the pipeline's cache rule
(services/pipeline/cache.py): its inputs are the job, the profile and the content hashes of the
world, the SFT start and the reward models it serves; ``<run dir>/job.json`` holds its results. A
finished job with the same inputs is not run again, so an interrupted table resumes where it stopped.

Adaptability jobs also evaluate the policy during the run (greedy, a fixed subset of the test
split) every ``claims.adapt_eval_every`` steps, and one of them lets a joiner's node (the expert of
the benchmark the generalisation world leaves uncovered) join after step ``claims.adapt_join_step``
through ``MoRRun.request_add_node``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.common.config import NodeEndpoint, RunConfig
from services.common.data.world import load_world
from services.common.evaluation import evaluate_policy
from services.common.models.factory import load_vlm
from services.orchestrator.fusion.trainer import LogitRouter
from services.orchestrator.training_run import MoRRun
from services.pipeline import cache
from services.pipeline.reward_models import serve_nodes
from services.pipeline.table.prepare import RMSpec, Workspace, rm_settings
from services.pipeline.table.profiles import Profile, method
from services.pipeline.world import world_hash

ROUTER_PROBE_PROMPTS = 40  # test prompts per benchmark on which the router's weights are averaged


@dataclass(frozen=True)
class RunJob:
    """What to run: a method in a scenario's world with one seed (and, for adaptability, a joiner)."""

    scenario: str  # main, general, noise<NN>, adapt, adapt_control
    world: str
    method: str
    seed: int
    steps: int
    track: bool = False  # evaluate during the run (adaptability curves)
    join: str | None = None  # node that joins after claims.adapt_join_step

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.method}/s{self.seed}"


@dataclass(frozen=True)
class JobInputs:
    """A job plus the reward models it serves (picklable, for worker processes)."""

    job: RunJob
    profile: Profile
    ws: Workspace
    nodes: tuple[tuple[RMSpec, str], ...] = ()  # (spec, checkpoint) served from the start
    joiner: tuple[RMSpec, str] | None = None
    rm_accuracy: dict[str, float] = field(default_factory=dict)


def _eval(vlm: Any, world: Any, n: int) -> dict[str, Any]:
    ev = evaluate_policy(vlm, world, per_benchmark=n)
    keep = ("n", "exact_match", "vqa_accuracy", "format_ok", "chance", "blind")
    return {"benchmarks": {b: {k: r[k] for k in keep} for b, r in ev["benchmarks"].items()},
            "client_preference": ev["client_preference"], "samples": ev["samples"][:6]}


def run_config(inputs: JobInputs, endpoints: list[NodeEndpoint], out: Path) -> RunConfig:
    p, job, m = inputs.profile, inputs.job, method(inputs.job.method)
    hybrid = dict(p.hybrid) if m.rules else {**p.hybrid, "format_weight": 0.0, "accuracy_weight": 0.0}
    if m.verifiable:
        hybrid["accuracy_weight"] = p.verifiable_accuracy_weight
    if not m.rm_reward:
        hybrid["rm_weight"] = 0.0
    router: dict[str, Any] = {**p.router, "kind": m.router}
    if m.router == "oracle":
        router["homes"] = home_nodes(load_world(inputs.ws.world_dir(job.world)), [e.node_id for e in endpoints])
    return RunConfig(
        seed=job.seed, world=inputs.ws.world_dir(job.world), output_dir=out, policy={"path": inputs.ws.sft_dir},
        sampler=None, nodes=endpoints, grpo={**p.grpo, "steps": job.steps},
        router=router, hybrid=hybrid,
        fanout={"step_deadline_s": 300, "min_nodes": 1}, checkpoint_every=max(job.steps, 1), torch_threads=1,
    )


def home_nodes(world: Any, nodes: Sequence[str]) -> dict[str, str]:
    """Benchmark -> the node (among ``nodes``) whose client holds the largest share of its data on it:
    the oracle router's routes. A benchmark no node's client covers has no home (uniform there)."""
    homes = {}
    for b in world.benchmarks:
        share = {n: world.clients[n].domain_mix.get(b, 0.0) / sum(world.clients[n].domain_mix.values())
                 for n in nodes if n in world.clients}
        best = max(share, key=lambda n: share[n], default=None)
        if best is not None and share[best] > 0:
            homes[b] = best
    return homes


def router_by_domain(run: Any, world: Any) -> dict[str, dict[str, float]] | None:
    """Mean router weight of each node on each benchmark's test prompts (learned routers only)."""
    router = run.router
    if not isinstance(router, LogitRouter):
        return None
    out = {}
    for b in world.benchmarks:
        exs = world.examples(b, "test")[:ROUTER_PROBE_PROMPTS]
        feats = run.embedder.embed([e.question for e in exs], [world.load_image(e.image) for e in exs])
        w = router.weights(feats, torch.ones(router.k, dtype=torch.bool)).mean(0)
        out[b] = {n: float(x) for n, x in zip(router.node_ids, w.tolist(), strict=True)}
    return out


def _curves(records: list[Any]) -> dict[str, Any]:
    nodes = sorted({n.node_id for r in records for n in r.nodes})
    weight = {n: [next((x.weight_mean for x in r.nodes if x.node_id == n), 0.0) for r in records] for n in nodes}
    return {
        "step": [r.step for r in records], "reward": [r.reward_mean for r in records],
        "fused": [r.fused_reward_mean for r in records], "rule": [r.rule_reward_mean for r in records],
        "kl": [r.kl for r in records], "sampled_accuracy": [r.accuracy_mean for r in records],
        "format": [r.format_mean for r in records], "step_seconds": [r.phases.get("total", 0.0) for r in records],
        "weights": weight,
    }


async def _train(inputs: JobInputs, out: Path, world: Any, track_n: int) -> dict[str, Any]:
    job, claims = inputs.job, inputs.profile.claims
    specs = list(inputs.nodes) + ([inputs.joiner] if inputs.joiner else [])
    track: list[dict[str, Any]] = []
    async with serve_nodes([rm_settings(inputs.profile, inputs.ws, spec, Path(ckpt)) for spec, ckpt in specs]) as endpoints:
        start = [endpoints[s.node_id] for s, _ in inputs.nodes]
        run: Any = None

        def on_step(r: Any) -> None:
            if job.track and (r.step % claims.adapt_eval_every == 0 or r.step in (claims.adapt_join_step, job.steps)):
                track.append(_track_point(r.step, _eval(run.trainer.policy, world, track_n)))
            if inputs.joiner and r.step == claims.adapt_join_step:
                run.request_add_node(endpoints[inputs.joiner[0].node_id])

        run = MoRRun(run_config(inputs, start, out), on_step=on_step, on_status=lambda _msg: None)
        result = await run.run()
        domains = router_by_domain(run, world)
    return {"records": run.records, "policy": result.final_policy, "router_domains": domains, "track": track}


def run_job(inputs: JobInputs) -> dict[str, Any]:
    """Run (or reuse) one job; returns its result dict (also written to <run dir>/job.json)."""
    torch.set_num_threads(1)
    # Worker processes start with fresh logging: loopback plaintext is the point here, not a warning.
    logging.getLogger("services.common.grpc").setLevel(logging.ERROR)
    job, p, ws = inputs.job, inputs.profile, inputs.ws
    run_dir = ws.run_dir(job.scenario, job.method, job.seed)
    done = run_dir / "job.json"
    spec = {"job": asdict(job), "profile": p.describe(), "rms": [[asdict(s), c] for s, c in inputs.nodes]}
    served = [*inputs.nodes, *([inputs.joiner] if inputs.joiner else [])]
    key = {"spec": spec, "world": world_hash(ws.world_dir(job.world)), "sft": cache.content_hash(ws.sft_dir),
           "rms": {s.node_id: cache.content_hash(Path(c)) for s, c in served}}

    def build() -> None:
        run_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        world = load_world(ws.world_dir(job.world))
        track_n = p.claims.adapt_eval_examples
        result: dict[str, Any] = {"spec": spec, "key": job.key, "rm_accuracy": inputs.rm_accuracy}
        if not method(job.method).trains:
            result.update(eval=_sft_eval(inputs, world), curves=None, router_domains=None, track=None)
        else:
            start = [_track_point(0, _eval(load_vlm(ws.sft_dir), world, track_n))] if job.track else []
            trained = asyncio.run(_train(inputs, run_dir / "run", world, track_n))
            result.update(eval=_eval(load_vlm(trained["policy"]), world, p.eval_examples),
                          curves=_curves(trained["records"]), router_domains=trained["router_domains"],
                          track=(start + trained["track"]) if job.track else None)
        result["seconds"] = time.perf_counter() - t0
        done.write_text(json.dumps(result, indent=1, sort_keys=True, allow_nan=True))

    built = cache.ensure(run_dir, key, build)  # a half-finished job starts over
    return {**json.loads(done.read_text()), "cached": not built}


def _sft_eval(inputs: JobInputs, world: Any) -> dict[str, Any]:
    """The SFT start's evaluation on a world: greedy, so one per world serves every seed (cached)."""
    ws, n = inputs.ws, inputs.profile.eval_examples
    path = ws.root / "sft_eval" / f"{inputs.job.world}-{n}.json"
    key = {"sft": cache.content_hash(ws.sft_dir), "world": world_hash(ws.world_dir(inputs.job.world)), "examples": n}
    cache.ensure(path, key, lambda: path.write_text(json.dumps({"eval": _eval(load_vlm(ws.sft_dir), world, n)})))
    return json.loads(path.read_text())["eval"]


def _track_point(step: int, ev: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, "client_preference": ev["client_preference"],
            "vqa_accuracy": {b: x["vqa_accuracy"] for b, x in ev["benchmarks"].items()}}


__all__ = ["JobInputs", "RunJob", "home_nodes", "router_by_domain", "run_config", "run_job"]
