"""One settings model per service. Each is a ServiceSettings: YAML first, MOR_<SERVICE>__… env overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.config.base import Section, ServiceSettings
from services.common.config.sections import (
    AuthSection,
    BatchingSection,
    LimitsSection,
    MetricsSection,
    MiB,
    OrchestratorAuthSection,
    RewardNodeAuthSection,
    SamplerAuthSection,
    ServerSection,
    TLSSection,
)
from services.common.config.variants import RewardModelKind, SamplerBackendName
from services.common.models.config import ModelConfig


class RewardModelSection(Section):
    """Which reward model a node serves and how its score is mixed with the node's own rules."""

    kind: RewardModelKind = Field("light", description="RM architecture: a VLM backbone with a scalar head (LoRA), or MiniLM text + small CNN.")
    checkpoint: Path | None = Field(None, description="Directory of the trained RM (safetensors + metadata). Required to serve.")
    rm_weight: float = Field(1.0, ge=0, description="Weight of the learned RM score in the node's hybrid score.")
    format_weight: float = Field(0.0, ge=0, description="Weight of the node's own format check in its hybrid score.")
    length_weight: float = Field(0.0, ge=0, description="Weight of the node's own length check in its hybrid score.")
    length_budget_words: int = Field(16, ge=1, description="Length check: words allowed before the (negative) length part grows; -1 at twice the budget.")
    backbone: ModelConfig = Field(default_factory=ModelConfig, description="kind vlm, training only: the VLM backbone to start from (preset or local checkpoint).")
    lora_rank: int = Field(8, ge=1, description="kind vlm, training only: LoRA rank of the adapters on the backbone's projections.")
    lora_alpha: float = Field(16.0, gt=0, description="kind vlm, training only: LoRA scaling numerator (scale = alpha / rank).")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads for training and scoring; None keeps torch's default (all cores).")


class RMTrainSection(Section):
    """Bradley-Terry training of the node's reward model on its own preference pairs (`mor reward-node train`)."""

    epochs: int = Field(20, ge=1, description="Passes over the training pairs.")
    batch_size: int = Field(32, ge=1, description="Preference pairs per optimiser step.")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming the learning rate up from 0.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the global gradient norm to this value.")
    seed: int = Field(0, description="Seed of the head's init, pair order and dropout.")
    max_train_pairs: int | None = Field(None, ge=1, description="Use at most this many training pairs (smoke runs); None uses all.")
    grounding_epochs: int = Field(12, ge=0, description="Passes over the node's own labelled examples (labelled.jsonl) before the pairs: the RM learns to rank the correct answer first (services.reward_node.grounding); 0, or no labelled examples, skips it.")
    classify_epochs: int = Field(30, ge=0, description="Before grounding, passes in which a light RM's question-conditioned image pathway learns to answer the labelled questions itself (a classifier over the answers they know, its head then dropped; services.reward_node.grounding.classify). Without it the pathway sat on a plateau. 0 skips it; other RMs skip it.")
    grounding_lr: float = Field(1e-3, gt=0, description="AdamW learning rate of grounding and of its classifier stage (constant after a 5 % warm-up).")
    max_labelled: int | None = Field(None, ge=1, description="Ground on at most this many labelled examples (smoke runs); None uses all.")
    held_out_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the pairs held out (seeded by `seed`) to report pair accuracy, when data_dir is a preference dataset without a test or validation split.")


class PrototypeSection(Section):
    """Optional domain prototype published in GetInfo for similarity routing, through the Gaussian
    mechanism (clipped norm 1, see services/reward_node/privacy.py): noisy unless asked otherwise."""

    publish: bool = Field(False, description="Publish the mean embedding of the node's own prompts in GetInfo.")
    noise_sigma: float | None = Field(None, ge=0, description="Std of the Gaussian noise added to the prototype. Unset: calibrated to (epsilon, delta); 0 publishes the exact mean (no privacy guarantee, logged as a warning).")
    epsilon: float = Field(1.0, gt=0, description="Differential-privacy epsilon the noise is calibrated to when noise_sigma is unset.")
    delta: float = Field(1e-5, gt=0, lt=1, description="Differential-privacy delta of the published prototype.")


class RewardNodeSettings(ServiceSettings):
    """`mor reward-node serve`: one organisation's reward model behind gRPC."""

    model_config = SettingsConfigDict(env_prefix="MOR_REWARD_NODE__")

    node_id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$", description="Stable id of this node (its organisation).")
    data_dir: Path | None = Field(None, description="Private preference data of this organisation (training only; never served): a world, a world's client folder, or a preference dataset file or folder (TRL or plain JSONL; docs/data.md).")
    model: RewardModelSection = Field(default_factory=RewardModelSection, description="The RM served.")
    server: ServerSection = Field(default_factory=ServerSection, description="gRPC listener.")
    tls: TLSSection = Field(default_factory=TLSSection, description="Transport security.")
    auth: RewardNodeAuthSection = Field(default_factory=RewardNodeAuthSection, description="Accepted tokens, caller identities and what each may call (default: the orchestrator only).")
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Prometheus endpoint.")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="Input limits.")
    batching: BatchingSection = Field(default_factory=BatchingSection, description="Dynamic batching.")
    prototype: PrototypeSection = Field(default_factory=PrototypeSection, description="Domain prototype in GetInfo.")
    train: RMTrainSection = Field(default_factory=RMTrainSection, description="Local RM training (`mor reward-node train`).")

    @classmethod
    def loopback(cls, node_id: str, kind: str, checkpoint: Path | None, **fields: Any) -> RewardNodeSettings:
        """An in-process node (experiments, benchmarks, tests): 127.0.0.1, a free port, plaintext, no
        metrics port, one torch thread. ``fields`` adds settings; its ``model`` entries join kind and
        checkpoint."""
        model = {"kind": kind, "checkpoint": checkpoint, "torch_threads": 1, **fields.pop("model", {})}
        return cls(node_id=node_id, model=model, server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
                   tls={"insecure": True}, metrics={"enabled": False}, **fields)


class SamplingDefaultsSection(Section):
    """Sampling values a Generate request gets for the SamplingParams fields it leaves unset."""

    temperature: float = Field(1.0, ge=0, description="Softmax temperature; 0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 disables nucleus sampling.")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely tokens; 0 disables top-k.")
    max_new_tokens: int = Field(16, ge=1, description="Tokens generated per completion when the request gives none.")


class HFBackendSection(Section):
    """The transformers backend (CPU, or one GPU for small models)."""

    device: str = Field("cpu", description="torch device of the policy, e.g. cpu or cuda:0.")
    max_batch_rows: int = Field(256, ge=1, description="Most sequences (prompts x group size) in one generate call; larger requests run in slices.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None keeps torch's default. On a shared CPU 1-2 is often fastest.")


class VLLMBackendSection(Section):
    """The vLLM backend (GPU only, `pip install mor[vllm]`)."""

    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may take for weights and KV cache.")
    max_model_len: int = Field(4096, ge=64, description="Longest prompt + completion, in tokens.")
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank a pushed adapter may have.")
    max_num_seqs: int = Field(256, ge=1, description="Sequences vLLM schedules at once.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is sharded over.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (slower decoding, faster start-up).")
    work_dir: Path | None = Field(None, description="Where adapters and the exported base checkpoint are written; None: a temporary folder.")


class SamplerSettings(ServiceSettings):
    """`mor sampler serve`: grouped rollouts of the current policy, versioned weight updates."""

    model_config = SettingsConfigDict(env_prefix="MOR_SAMPLER__")

    backend: SamplerBackendName = Field("hf", description="hf: transformers on CPU/GPU. vllm: GPU only, needs the vllm extra.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy to serve (preset or local checkpoint).")
    max_group_size: int = Field(32, ge=2, description="Largest group size G accepted in Generate (the smallest is 2: a group of one has no baseline).")
    max_prompts: int = Field(64, ge=1, description="Most prompts in one Generate request.")
    max_new_tokens: int = Field(64, ge=1, description="Cap on sampling_params.max_new_tokens.")
    max_prompt_tokens: int = Field(1024, ge=1, description="Longest prompt text in tokens of the served tokenizer (the chat template and image tokens not counted); limits.max_prompt_chars is checked first.")
    max_request_tokens: int = Field(262_144, ge=1, description="Most tokens one Generate call may cost: group_size x the sum over its prompts of (prompt tokens + max_new_tokens).")
    max_pending_pixels: int = Field(4 * 4096 * 4096, ge=1, description="Image pixels all admitted Generate calls may hold decoded at once (about 3 bytes each); a call whose images would pass it gets RESOURCE_EXHAUSTED before decoding.")
    max_queued_samples: int = Field(4096, ge=1, description="Completions (prompts x group size) admitted at once, running or waiting; more get RESOURCE_EXHAUSTED.")
    max_weights_mb: int = Field(2048, ge=1, description="Largest UpdateWeights payload in MiB; a bigger header gets RESOURCE_EXHAUSTED.")
    weights_idle_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the next UpdateWeights chunk; a stalled upload gets DEADLINE_EXCEEDED and releases the update lock.")
    weights_receive_timeout_s: float = Field(900.0, gt=0, description="Longest time to receive a whole UpdateWeights payload (2 GiB in 15 min is 2.3 MB/s), after which it gets DEADLINE_EXCEEDED.")
    sampling: SamplingDefaultsSection = Field(default_factory=SamplingDefaultsSection, description="Defaults for unset sampling parameters.")
    hf: HFBackendSection = Field(default_factory=HFBackendSection, description="Settings of the hf backend.")
    vllm: VLLMBackendSection = Field(default_factory=VLLMBackendSection, description="Settings of the vllm backend.")
    server: ServerSection = Field(default_factory=ServerSection, description="gRPC listener.")
    tls: TLSSection = Field(default_factory=TLSSection, description="Transport security.")
    auth: SamplerAuthSection = Field(default_factory=SamplerAuthSection, description="Accepted tokens, caller identities and what each may call (default: Generate and UpdateWeights only for the orchestrator).")
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Prometheus endpoint.")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="Input limits.")

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> SamplerSettings:
        if self.sampling.max_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"sampling.max_new_tokens ({self.sampling.max_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})"
            )
        return self

    @property
    def max_weights_bytes(self) -> int:
        return self.max_weights_mb * MiB


class OrchestratorTrainerSection(Section):
    """`mor orchestrator serve` under torchrun: the process group is made once, before any run exists.

    Each run still picks its strategy (``distributed.strategy`` of its RunConfig); its ``device`` must be
    of this type. Runs execute one at a time (max_concurrent_runs 1): all ranks follow one trainer.
    """

    device: Literal["cpu", "cuda"] = Field("cpu", description="Device type of every rank (cuda: cuda:LOCAL_RANK).")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on cuda, else gloo.")
    timeout_s: float = Field(1800.0, gt=0, description="Timeout of a collective (workers wait this long for rank 0).")


class OrchestratorSettings(ServiceSettings):
    """`mor orchestrator serve`: the run-control API."""

    model_config = SettingsConfigDict(env_prefix="MOR_ORCHESTRATOR__")

    runs_dir: Path = Field(Path("runs"), description="Where runs write checkpoints, logs and results.")
    max_concurrent_runs: int = Field(1, ge=1, description="Runs executing at once; more StartRun calls get RESOURCE_EXHAUSTED.")
    max_finished_runs: int = Field(64, ge=0, description="Ended runs (completed, stopped, failed) the API still answers for; "
                                   "starting a run forgets the oldest beyond this (their files stay in runs_dir).")
    max_nodes: int = Field(256, ge=1, description="Nodes the registry holds; RegisterNode of a new node beyond it gets RESOURCE_EXHAUSTED.")
    node_tls: TLSSection = Field(default_factory=TLSSection, description="How to secure calls to nodes added with RegisterNode (mTLS: ca_cert + cert + key).")
    node_auth: AuthSection = Field(default_factory=AuthSection, description="Token presented to nodes added with RegisterNode.")
    server: ServerSection = Field(default_factory=ServerSection, description="gRPC listener.")
    tls: TLSSection = Field(default_factory=TLSSection, description="Transport security.")
    auth: OrchestratorAuthSection = Field(default_factory=OrchestratorAuthSection, description="Accepted tokens, caller identities and what each may call (default: run control for operators; each organisation registers and removes only its own node).")
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Prometheus endpoint.")
    trainer: OrchestratorTrainerSection = Field(
        default_factory=OrchestratorTrainerSection,
        description="Under torchrun (WORLD_SIZE > 1): the process group every run's trainer spans.")
