"""The run config (one MoR training run) and the local-stack config that wraps it."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.common.config.base import Section
from services.common.config.sections import EndpointSection, NodeEndpoint
from services.common.config.services import RMTrainSection
from services.common.config.variants import ROUTERS, ROUTERS_WITH_ARG
from services.common.data.config import WorldConfig
from services.common.models.config import LANGUAGE_MODEL_TARGETS, ModelConfig, SFTConfig

ROUTER_KINDS = tuple(k for k in ROUTERS if k not in ROUTERS_WITH_ARG)
_ROUTER_RE = re.compile(rf"^({'|'.join(ROUTER_KINDS)}|({'|'.join(ROUTERS_WITH_ARG)}):[a-z0-9][a-z0-9_\-]*)$")


class GRPOSection(Section):
    """GRPO with a KL penalty to the initial policy."""

    group_size: int = Field(4, ge=2, description="Answers sampled per prompt (G). A group of one has no baseline, so G >= 2.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per step (B); a step trains on B*G answers.")
    steps: int = Field(20, ge=1, description="Optimisation steps of the run.")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate.")
    beta: float = Field(0.04, ge=0, description="Weight of the k3 KL penalty to the reference (initial) policy.")
    target_kl: float | None = Field(None, gt=0, description="Adapt beta after every step towards this KL to the reference (proportional controller); None keeps beta fixed.")
    kl_horizon: int = Field(10, ge=1, description="With target_kl: steps over which beta moves by at most 20 % (larger: slower).")
    epsilon_low: float = Field(0.2, gt=0, lt=1, description="Lower clip of the importance ratio: 1 - epsilon_low.")
    epsilon_high: float = Field(0.2, gt=0, description="Upper clip of the importance ratio: 1 + epsilon_high.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field("grpo", description="How per-token losses are normalised.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Divide advantages by the group std, the batch std, or not at all.")
    epochs: int = Field(1, ge=1, description="Optimisation passes over each batch of rollouts.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_new_tokens: int = Field(16, ge=1, description="Longest sampled answer, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    max_staleness: int = Field(0, ge=0, description="Accept rollouts this many policy versions old (0: on-policy only).")
    push_every: int = Field(1, ge=1, description="Push new weights to the sampler every N steps.")
    overlap: bool = Field(False, description="Generate the next batch while the current one trains (one-step off-policy; needs max_staleness >= 1). A resumed run regenerates the prefetched batch with the restored weights.")
    lora: bool = Field(True, description="Train a LoRA adapter (reference = adapter disabled); false trains all weights.")
    lora_rank: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha: the adapter's update is scaled by lora_alpha / lora_rank.")
    lora_target_modules: str = Field(
        LANGUAGE_MODEL_TARGETS,
        description="Regex (peft target_modules) of the modules that get a LoRA adapter: by default the language "
        "model's attention and MLP projections, never the vision tower (see services/common/models/lora.py).",
    )
    micro_batch_size: int = Field(0, ge=0, description="Completions per forward/backward; gradients accumulate over "
                                  "micro-batches to one optimizer step per pass (0: the whole batch at once).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the trained parameters.")

    @model_validator(mode="after")
    def _overlap_needs_staleness(self) -> GRPOSection:
        if self.overlap and self.max_staleness < 1:
            raise ValueError("overlap: true samples one version behind the trainer; set max_staleness >= 1")
        return self

    @field_validator("lora_target_modules")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        return v


class DistributedSection(Section):
    """The trainer under torchrun (WORLD_SIZE > 1): how the policy is spread over the processes.

    The world size, ranks and rendezvous come from torchrun's environment, not from here; in one
    process (no torchrun) this section is ignored and the trainer is the plain one. ``backend`` and
    ``timeout_s`` apply to `mor orchestrator run`; under `mor orchestrator serve` the process group
    exists before any run, and the server's ``trainer`` section sets them.
    """

    strategy: Literal["fsdp", "ddp"] = Field(
        "fsdp", description="fsdp: FSDP2 (fully_shard per decoder block, parameters and optimizer state sharded); "
        "ddp: DistributedDataParallel (a full replica per process, gradients all-reduced).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend; auto: nccl when the trainer's device is cuda, else gloo.",
    )
    timeout_s: float = Field(
        1800.0, gt=0, description="Timeout of a collective: how long a worker rank waits for rank 0's next "
        "command (rank 0 spends scoring and pushing time between steps).",
    )


class RouterSection(Section):
    """How node rewards are fused."""

    kind: str = Field("mor", description=f"One of {', '.join(ROUTER_KINDS)} or single:<node_id>.")
    hidden: int = Field(64, ge=1, description="Hidden width of the gating network (mor router).")
    train_steps: int = Field(200, ge=0, description="Bradley-Terry steps on the router pairs.")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate of router training (mor and static routers).")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay of router training.")
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of router pairs held out to report the trained router's pair accuracy."
    )
    prototype_temperature: float = Field(
        0.05, gt=0, description="Softmax temperature over cosine similarities to the node prototypes (prototype router)."
    )
    calibration_prior_count: float = Field(
        32.0, ge=0, description="Pseudo-count given to a node's published score_mean/score_std when its running "
        "calibration statistics are warm-started (0: ignore the published statistics).",
    )
    calibration_window: float = Field(
        0.0, ge=0, description="Cap on the effective count of a node's running score statistics: beyond it older "
        "scores are down-weighted geometrically, so z-scores follow the policy's drift (0: exact statistics of the whole run).",
    )
    calibration_std_floor: float = Field(
        1e-3, gt=0, description="Smallest standard deviation a z-score divides by (a node giving constant scores).",
    )
    pairs: int = Field(256, ge=1, description="Router pairs (the server's own preference pairs) scored on every node to train the router (mor, static).")
    homes: dict[str, str] = Field(
        default_factory=dict, description="Benchmark -> node id of its home expert, for the oracle router (an "
        "evaluation ceiling: it reads the benchmark label of the world's pool, which a real server does not have).",
    )

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        if not _ROUTER_RE.match(v):
            raise ValueError(f"unknown router {v!r}; allowed: {', '.join(ROUTER_KINDS)}, single:<node_id>")
        return v

    @model_validator(mode="after")
    def _oracle_homes(self) -> RouterSection:
        if self.kind == "oracle" and not self.homes:
            raise ValueError("router.kind 'oracle' needs router.homes (benchmark -> home node id)")
        return self


class HybridSection(Section):
    """R_total = rm_weight * fused RM reward + rule rewards."""

    rm_weight: float = Field(1.0, ge=0, description="Weight a of the fused reward-model reward.")
    format_weight: float = Field(0.2, ge=0, description="Weight of the answer-format rule.")
    accuracy_weight: float = Field(0.5, ge=0, description="Weight of exact-match accuracy when the prompt has a reference answer.")
    empty_response_reward: float = Field(-3.0, description="Fused reward of an empty answer, in calibrated (z-score) units; empty answers are not sent to the nodes.")


class FanoutSection(Section):
    """Scoring on the reward nodes."""

    step_deadline_s: float = Field(30.0, gt=0, description="Deadline for all nodes to answer one step's groups.")
    min_nodes: int = Field(1, ge=1, description="The step fails when fewer nodes than this answered.")
    health_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of the grpc.health check (and GetInfo) that re-admits an unhealthy node before a step."
    )
    max_inflight_chunks: int = Field(
        4, ge=1, description="ScoreBatch calls in flight to one node at once, when a step's groups are split by the "
        "node's published limits.max_batch_groups.",
    )


class DatasetRef(Section):
    """An outside dataset (docs/data.md): a path and which of its splits to read. A bare path string is accepted."""

    path: Path = Field(..., description="JSONL, parquet, save_to_disk folder, folder of split files or VQAv2 questions JSON.")
    split: str | None = Field(None, description="Split to read; None: train when the dataset has one, else its only split.")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, data: object) -> object:
        return {"path": data} if isinstance(data, (str, Path)) else data


class RunConfig(Section):
    """One MoR run: where the policy and data are, whom to call, and how to train."""

    seed: int = Field(0, description="Seed of prompt order, sampling and init.")
    world: Path = Field(Path("data/world"), description="Synthetic world holding the server prompt pool and router pairs; "
                        "read only for what `prompts` / `router_pairs` do not replace.")
    prompts: DatasetRef | None = Field(None, description="Outside prompt dataset used as the prompt pool instead of the world's "
                                       "(docs/data.md); reference answers are optional (used by the accuracy rule when present).")
    router_pairs: DatasetRef | None = Field(None, description="Outside server-side preference dataset (TRL prompt/chosen/rejected/"
                                           "images, or plain JSONL image/question/chosen/rejected) the router trains on "
                                           "instead of the world's router pairs (mor and static routers).")
    output_dir: Path = Field(Path("runs/mor"), description="Checkpoints, metrics and results go here.")
    policy: ModelConfig = Field(default_factory=ModelConfig, description="Policy to train (usually the SFT checkpoint).")
    sampler: EndpointSection | None = Field(None, description="Remote sampler; none (and no samplers) means sample in process.")
    samplers: list[EndpointSection] = Field(
        default_factory=list, description="Several sampler replicas instead of one sampler: a step's prompts are split "
        "across the replicas that serve the latest version, weights are pushed to all, a failed replica is "
        "dropped and re-admitted (re-pushed) when it answers again.")
    sampler_wait_s: float = Field(
        120.0, ge=0, description="How long a step waits for a sampler that went away (killed, restarting) to serve "
        "again before the run fails; a sampler that comes back gets the latest weights pushed before it generates.",
    )
    nodes: list[NodeEndpoint] = Field(default_factory=list, description="Reward nodes to fan out to.")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="GRPO settings.")
    router: RouterSection = Field(default_factory=RouterSection, description="Reward fusion.")
    hybrid: HybridSection = Field(default_factory=HybridSection, description="Hybrid reward weights.")
    fanout: FanoutSection = Field(default_factory=FanoutSection, description="Fan-out deadlines and quorum.")
    checkpoint_every: int = Field(10, ge=1, description="Write a resumable checkpoint every N steps.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads of the trainer; None keeps torch's default (all cores).")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch device of the trainer's policy (and of in-process sampling): cpu, cuda or cuda:N.")
    distributed: DistributedSection = Field(default_factory=DistributedSection, description="The trainer under torchrun (used only when WORLD_SIZE > 1).")

    @property
    def sampler_endpoints(self) -> list[EndpointSection]:
        """Every remote sampler of the run (empty: sample in process)."""
        return [self.sampler] if self.sampler is not None else list(self.samplers)

    @model_validator(mode="after")
    def _samplers_agree(self) -> RunConfig:
        if self.sampler is not None and self.samplers:
            raise ValueError("sampler and samplers: give one sampler or a list of replicas, not both")
        addresses = [s.address for s in self.samplers]
        dup = sorted({a for a in addresses if addresses.count(a) > 1})
        if dup:
            raise ValueError(f"samplers: duplicate address {', '.join(dup)}")
        return self

    @model_validator(mode="after")
    def _nodes_agree(self) -> RunConfig:
        ids = [n.node_id for n in self.nodes]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"nodes: duplicate node_id {', '.join(dup)}")
        if self.nodes and self.fanout.min_nodes > len(self.nodes):
            raise ValueError(f"fanout.min_nodes={self.fanout.min_nodes} exceeds the {len(self.nodes)} configured nodes")
        if self.router.kind.startswith("single:") and self.nodes and self.router.kind[7:] not in ids:
            raise ValueError(f"router.kind {self.router.kind!r} names no configured node (have {', '.join(ids)})")
        return self


class StackConfig(Section):
    """`mor demo` / `mor stack up`: everything on loopback, from synthetic world to trained policy."""

    workdir: Path = Field(Path("runs/local"), description="All artefacts of the local stack go under this folder.")
    world: WorldConfig = Field(default_factory=WorldConfig, description="Synthetic federated world to generate.")
    policy: ModelConfig = Field(default_factory=ModelConfig, description="Initial policy (preset or checkpoint).")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised warm start before RL.")
    eval_examples: int = Field(100, ge=1, description="Held-out examples per benchmark in the result table.")
    run: RunConfig = Field(default_factory=RunConfig, description="The MoR run (nodes are filled in by the stack).")
    rm_train: RMTrainSection = Field(default_factory=RMTrainSection, description="How each client trains its RM before its node serves (skipped when a matching checkpoint exists).")
