"""One MoR run: sample → fan out → calibrate → route → hybrid reward → GRPO step → push, repeated.

    run = MoRRun(cfg, resume=True, on_step=print)
    result = await run.run()          # returns after cfg.grpo.steps steps, a stop request, or an error
    run.request_stop()                # from anywhere on the loop: finish the current step, then stop

One step (``MoRRun.run_step``), phase by phase, each phase in the module that owns it:
  1. join     nodes added since the last step enter the fan-out, calibration and a refitted router;
  2. sample   B prompts from the stream, G rollouts each (the prefetch started last step under
              ``grpo.overlap``); rollouts too many versions old are refused (StaleRollouts);
  3. prefetch with ``grpo.overlap``, the next step's sampling starts now, on the current weights;
  4. score    every reward node scores the answers (``fanout.RewardFanout.score_answers``);
  5. reward   calibrate → embed → fuse → rules → hybrid → advantages (``rewards.step_rewards``);
  6. train    one GRPO step, which also adapts beta under ``grpo.target_kl`` (``grpo.trainer``);
  7. push     every ``grpo.push_every`` steps and at the last, the weights go to the sampler;
  8. record   the StepRecord: steps.jsonl, Prometheus, the on_step callback (``records``).

The loop owns no maths and no gRPC: those live in the modules named above. Model work (generation
in process, the GRPO step) runs on one worker thread so that the event loop stays free for the
fan-out, health checks and the run-control API.

Versions: the sampler starts at the version it reports; each push increments it. A step's
rollouts carry the version that sampled them; rollouts more than ``grpo.max_staleness``
versions behind the trainer's latest push are refused (the step fails with StaleRollouts).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.common.config import ConfigError, RunConfig
from services.common.config.base import redacted_dump
from services.common.data.records import PoolPrompt, PreferencePair
from services.common.data.sources import DatasetError, ImageSource, read_prefs, read_vqa
from services.common.data.world import World, load_world
from services.common.errors import VersionMismatch
from services.common.models.factory import build_vlm
from services.orchestrator import checkpoint as ckpt_io
from services.orchestrator import worker
from services.orchestrator.calibration import NodeCalibration
from services.orchestrator.embedding import PromptEmbedder
from services.orchestrator.fanout import RewardFanout
from services.orchestrator.fusion import build_router
from services.orchestrator.fusion.trainer import score_router_pairs
from services.orchestrator.grpo.trainer import GRPOTrainer, RolloutBatch
from services.orchestrator.parallel import ParallelContext
from services.orchestrator.prompts import Prompt, PromptStream
from services.orchestrator.records import StepRecord, export_step, step_record
from services.orchestrator.rewards import step_rewards
from services.orchestrator.rollouts import LocalSampler, Rollouts, RolloutSource
from services.orchestrator.sampler_pool import SamplerPool

log = logging.getLogger(__name__)

SEED_MODULUS = 2**31 - 1


class StaleRollouts(VersionMismatch):
    """The sampler answered with a policy version older than the run accepts."""

    reason = "STALE_ROLLOUTS"


@dataclass(frozen=True)
class RunResult:
    """How a run ended."""

    steps_done: int
    policy_version: int
    stopped: bool
    seconds: float
    output_dir: Path
    final_policy: Path | None
    trainer_processes: int = 1  # the torchrun world the trainer spanned


def generation_seed(run_seed: int, step: int) -> int:
    """The sampling seed of a step: a function of the run seed and step only, so a resumed run
    samples exactly what the uninterrupted one did."""
    return (run_seed * 1_000_003 + step * 7919) % SEED_MODULUS


def rollout_batch(prompts: list[Prompt], rollouts: Rollouts, advantages: torch.Tensor) -> RolloutBatch:
    """The trainer's view of a step: every completion beside its prompt, group-major like ``advantages``."""
    flat = [(p, s) for p, group in zip(prompts, rollouts.groups, strict=True) for s in group]
    return RolloutBatch(
        questions=[p.question for p, _ in flat], images=[p.image for p, _ in flat],
        completion_ids=[list(s.token_ids) for _, s in flat], old_logprobs=[list(s.logprobs) for _, s in flat],
        advantages=advantages,
    )


class MoRRun:
    """A training run built from a RunConfig; see the module docstring."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False,
                 on_step: Callable[[StepRecord], None] | None = None,
                 on_status: Callable[[str], None] | None = None,
                 parallel: ParallelContext | None = None) -> None:
        self.cfg = cfg
        self.parallel = parallel  # rank 0 of a torchrun world: the trainer spans every rank
        self.resume = resume
        self.world: World | None = None
        self.on_step = on_step
        self.on_status = on_status or (lambda msg: log.info("%s", msg))
        self.output_dir = Path(cfg.output_dir)
        self.step = 0
        self.policy_version = 0
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchestrator-model")
        self.records: list[StepRecord] = []
        self.trainer: Any = None
        self.fanout: Any = None
        self.source: RolloutSource | None = None
        self._joining: list[Any] = []
        self._prefetch: asyncio.Future | None = None
        self._stream_consumed: dict[str, int] | None = None  # stream position of the last trained batch

    # ---- control ---------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the step in progress, checkpoint, and return."""
        self._stop.set()

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- set-up ----------------------------------------------------------------------------------
    async def setup(self) -> None:
        cfg = self.cfg
        if cfg.torch_threads is not None:
            torch.set_num_threads(cfg.torch_threads)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.json").write_text(json.dumps(redacted_dump(cfg), indent=2, default=str))
        self.stream = PromptStream(*self._prompt_pool(), cfg.seed)

        self.on_status(f"policy: loading {cfg.policy.path or f'{cfg.policy.arch}/{cfg.policy.preset}'}")
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device: {cfg.device} asked for, but torch sees no CUDA GPU")
        if self.parallel is not None:
            worker.check_run(cfg, self.parallel)
            ctx = self.parallel
            self.on_status(f"trainer: {cfg.distributed.strategy} over {ctx.world_size} processes ({ctx.backend})")
            await self._in_worker(worker.announce_run, cfg)
            self.trainer = await self._in_worker(worker.build_trainer, cfg, ctx)
        else:
            vlm = await self._in_worker(lambda: build_vlm(cfg.policy).to(cfg.device))
            self.trainer = await self._in_worker(lambda: GRPOTrainer(vlm, cfg.grpo, seed=cfg.seed))
        endpoints = cfg.sampler_endpoints
        if endpoints:  # one sampler is a pool of one: the same waiting and re-push when it restarts
            self.source = SamplerPool(endpoints, wait_s=cfg.sampler_wait_s)
        else:
            self.source = LocalSampler(self.trainer.policy, self._executor)
        sampler_version = await self.source.start()

        self.fanout = RewardFanout(cfg.nodes, cfg.fanout)
        infos = await self.fanout.start()
        self.node_ids = list(self.fanout.node_ids)
        self.embedder = PromptEmbedder()
        self.calibration = NodeCalibration(self.node_ids, infos, cfg.router)
        self.router = build_router(cfg.router.kind, self.node_ids, cfg.router, feature_dim=self.embedder.dim,
                                   infos=infos, seed=cfg.seed)

        state = ckpt_io.latest(self.output_dir) if self.resume else None
        if state is not None:
            await self._restore(ckpt_io.load(state))
            self.on_status(f"resumed from {state} at step {self.step}")
        else:
            await self._fit_router()
            if self.resume:
                self.on_status("resume: no checkpoint yet, starting from step 0")
            self._steps_file().write_text("")
        # The sampler must serve exactly the trainer's weights: push them unless it is a fresh
        # sampler (version 0) and this a fresh run (the initial policy on both sides).
        if state is not None or sampler_version != 0:
            self.policy_version = max(self.policy_version, sampler_version) + 1
            await self._push()
        else:
            self.policy_version = sampler_version

    def _world(self) -> World:
        """The generated world, opened on first use (a run on outside prompts and pairs never opens it)."""
        if self.world is None:
            self.world = load_world(self.cfg.world)
        return self.world

    def _prompt_pool(self) -> tuple[ImageSource, list[PoolPrompt]]:
        ref = self.cfg.prompts
        if ref is None:
            return self._world(), self._world().prompt_pool()
        try:
            pool = read_vqa(ref.path, ref.split, default=("train",))
        except DatasetError as exc:
            raise DatasetError(f"prompts: {exc}") from None
        self.on_status(f"prompts: {len(pool.prompts)} from {ref.path} ({pool.format}, split {pool.split}), "
                       f"{pool.answered} with reference answers")
        return pool.images, pool.prompts

    def _router_pairs(self) -> tuple[ImageSource, list[PreferencePair]]:
        ref = self.cfg.router_pairs
        if ref is None:
            return self._world(), self._world().router_pairs()
        try:
            prefs = read_prefs(ref.path, ref.split, default=("train",), client="server")
        except DatasetError as exc:
            raise DatasetError(f"router_pairs: {exc}") from None
        return prefs.images, prefs.pairs

    async def _fit_router(self) -> None:
        if not getattr(self.router, "trainable", False):
            return
        images, pairs = self._router_pairs()
        pairs = pairs[: self.cfg.router.pairs]
        self.on_status(f"router: scoring {len(pairs)} router pairs on {len(self.node_ids)} nodes")
        data = await score_router_pairs(self.fanout, self.calibration, self.embedder, pairs, images)
        report = await self._in_worker(self.router.fit, data)
        self.on_status("router: trained " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(report.items())))

    async def _restore(self, c: ckpt_io.Checkpoint) -> None:
        await self._in_worker(self.trainer.load_state_dict, c.trainer)
        self.router.load_state_dict(c.router)
        self.calibration.load_state_dict(c.calibration)
        self.stream.load_state_dict(c.stream)
        ckpt_io.set_rng_state(c.rng)
        self.step, self.policy_version = c.step, c.policy_version
        kept = [line for line in self._steps_file().read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= c.step] if self._steps_file().is_file() else []
        self._steps_file().write_text("".join(line + "\n" for line in kept))

    def _steps_file(self) -> Path:
        return self.output_dir / "steps.jsonl"

    def _save(self) -> Path:
        c = ckpt_io.Checkpoint(
            step=self.step, policy_version=self.policy_version, stream=self._stream_consumed or self.stream.state_dict(),
            calibration=self.calibration.state_dict(), trainer=self.trainer.state_dict(),
            router=self.router.state_dict(), rng=ckpt_io.rng_state(),
        )
        return ckpt_io.save(self.output_dir, c)

    async def _push(self) -> float:
        t0 = time.perf_counter()
        kind, payload, config_json = await self._in_worker(self.trainer.weights_payload)
        assert self.source is not None
        await self.source.push(self.policy_version, kind, payload, config_json)
        return time.perf_counter() - t0

    # ---- nodes joining mid-run -----------------------------------------------------------------
    def request_add_node(self, endpoint: Any) -> None:
        """A new organisation joins: its node enters fan-out, calibration and a refitted router
        before the next step (callable from an on_step callback)."""
        self._joining.append(endpoint)

    async def _admit_joining(self) -> None:
        while self._joining:
            ep = self._joining.pop(0)
            self.fanout.add(ep)
            await self.fanout.readmit()
            self.node_ids = list(self.fanout.node_ids)
            self.calibration.add_node(ep.node_id, self.fanout.infos.get(ep.node_id))
            self.router = build_router(self.cfg.router.kind, self.node_ids, self.cfg.router,
                                       feature_dim=self.embedder.dim, infos=self.fanout.infos, seed=self.cfg.seed)
            await self._fit_router()
            self.on_status(f"node {ep.node_id} joined at step {self.step + 1} "
                           f"({'healthy' if self.fanout.healthy.get(ep.node_id) else 'not reachable yet'})")

    # ---- the step --------------------------------------------------------------------------------
    async def _sample(self, step: int) -> tuple[list[Prompt], Rollouts, float]:
        """The prompts of ``step`` and their rollouts (with the seconds generation took)."""
        g = self.cfg.grpo
        t0 = time.perf_counter()
        prompts = self.stream.take(g.prompts_per_step)
        assert self.source is not None
        rollouts = await self.source.generate(prompts, g.group_size, temperature=g.temperature,
                                              max_new_tokens=g.max_new_tokens, seed=generation_seed(self.cfg.seed, step))
        return prompts, rollouts, time.perf_counter() - t0

    async def _rollouts(self, step: int) -> tuple[list[Prompt], Rollouts, float, float]:
        """The prompts and rollouts of ``step`` (the prefetch started last step, else sampled now), the
        seconds generation took and the seconds this step waited for it."""
        pending, self._prefetch = self._prefetch, None
        t_wait = time.perf_counter()
        prompts, rollouts, gen_s = await (pending if pending is not None else self._sample(step))
        wait_s = time.perf_counter() - t_wait  # with overlap: what is left of a prefetch started last step
        # Taken before the next prefetch draws from the stream: a checkpoint resumes after this batch.
        self._stream_consumed = self.stream.state_dict()
        return prompts, rollouts, gen_s, wait_s

    def _staleness(self, step: int, rollouts: Rollouts) -> int:
        """How many pushes the rollouts' policy is behind the trainer's; StaleRollouts beyond grpo.max_staleness."""
        staleness = self.policy_version - rollouts.policy_version
        limit = self.cfg.grpo.max_staleness
        if staleness < 0 or staleness > limit:
            raise StaleRollouts(f"step {step}: rollouts of policy version {rollouts.policy_version}, trainer at "
                                f"{self.policy_version} (grpo.max_staleness={limit})")
        if staleness:
            log.info("step %d: accepting rollouts %d version(s) old", step, staleness)
        return staleness

    async def run_step(self) -> StepRecord:
        """One step, phase by phase as the module docstring lists them."""
        g = self.cfg.grpo
        step = self.step + 1
        t_start = time.perf_counter()
        await self._admit_joining()
        prompts, rollouts, gen_s, wait_s = await self._rollouts(step)
        staleness = self._staleness(step, rollouts)
        t_gen = time.perf_counter()
        if g.overlap and step < g.steps:
            # One-step off-policy: the next batch samples from the current weights while this one trains.
            self._prefetch = asyncio.ensure_future(self._sample(step + 1))
        answers = [[s.text for s in group] for group in rollouts.groups]
        fan = await self.fanout.score_answers(prompts, answers)
        t_score = time.perf_counter()
        rewards = step_rewards(prompts, answers, fan.scores, fan.mask, calibration=self.calibration,
                               embedder=self.embedder, router=self.router, hybrid=self.cfg.hybrid, grpo=g)
        t_fuse = time.perf_counter()
        stats = await self._in_worker(self.trainer.step, rollout_batch(prompts, rollouts, rewards.advantages))
        t_train = time.perf_counter()
        self.step = step
        push_s = 0.0
        if step % g.push_every == 0 or step == g.steps:
            self.policy_version += 1
            push_s = await self._push()
        phases = {"generate": gen_s, "generate_wait": wait_s, "score": t_score - t_gen, "fuse": t_fuse - t_score,
                  "train": t_train - t_fuse, "push": push_s, "total": time.perf_counter() - t_start}
        record = step_record(step, rollouts.policy_version, staleness, fan, rewards, stats, phases)
        self.records.append(record)
        export_step(record, self._steps_file(), self.on_step)
        return record

    # ---- the run ---------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        """Set up, take steps until done or stopped, checkpoint, save the final policy."""
        t0 = time.perf_counter()
        try:
            await self.setup()
            g = self.cfg.grpo
            while self.step < g.steps and not self._stop.is_set():
                await self.run_step()
                if self.step % self.cfg.checkpoint_every == 0 or self.step == g.steps:
                    await self._in_worker(self._save)
            if self._stop.is_set() and self.step and self.step % self.cfg.checkpoint_every:
                await self._in_worker(self._save)
            final = await self._in_worker(self._save_policy) if self.step == g.steps else None
            result = RunResult(self.step, self.policy_version, self._stop.is_set(), time.perf_counter() - t0,
                               self.output_dir, final,
                               self.parallel.world_size if self.parallel is not None else 1)
            (self.output_dir / "result.json").write_text(json.dumps(
                {"steps_done": result.steps_done, "policy_version": result.policy_version,
                 "stopped": result.stopped, "seconds": result.seconds,
                 "final_policy": str(final) if final else None,
                 "trainer_processes": result.trainer_processes}, indent=2))
            return result
        finally:
            await self.close()

    def _save_policy(self) -> Path:
        """The trained policy as a plain HF checkpoint (adapter merged into a copy), for evaluation."""
        return self.trainer.export_policy().save(self.output_dir / "policy")

    async def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.cancel()
            with contextlib.suppress(BaseException):
                await self._prefetch
        if self.fanout is not None:
            await self.fanout.close()
        if self.source is not None:
            await self.source.close()
        if self.parallel is not None and self.trainer is not None:
            await self._in_worker(self.trainer.close)  # the other ranks leave the trainer's command loop
            self.trainer = None  # its device mesh / DDP wrapper must be gone before the process group is
        self._executor.shutdown(wait=True)


__all__ = ["MoRRun", "RunResult", "StaleRollouts", "generation_seed", "rollout_batch"]
