"""The GRPO trainer: one optimisation step of the policy on a batch of scored rollouts.

The maths lives in ``ops``; this module owns the model side: the LoRA wrapper (or a full-weights
copy) and the reference policy, batching and gradient accumulation, the optimizer, checkpoints of
the trainer state, and the weights payload the sampler takes.

Reference policy = the initial model. With LoRA it is the same network with the adapter disabled
(no second copy in memory); with full fine-tuning it is a frozen deep copy made once at start-up.

With ``grpo.target_kl`` (and beta > 0) a step ends by adapting beta to the KL it measured
(``ops.adaptive_beta``); the next step trains with it, and ``state_dict`` keeps it.

The policy runs in eval mode during a step: dropout would make the recomputed log-probs come from
another distribution than the one the sampler drew from, and the importance ratio would be noise.
Gradients flow regardless of the mode.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from services.common.config.run import GRPOSection
from services.common.models.lora import add_lora
from services.common.models.processor import VLMBatch
from services.common.models.vlm import VLM, base_model
from services.orchestrator.grpo import ops, shard

log = logging.getLogger(__name__)

# peft (0.21) asks transformers (5.x) a deprecated question on every get_peft_model; noise in a run's log.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)

ADAPTER_NAME = "default"
_STATE_FORMAT = 1


@dataclass(frozen=True)
class RolloutBatch:
    """N = B*G scored completions, group by group (the G completions of one prompt adjacent)."""

    questions: Sequence[str]  # the prompt text of each completion
    images: Sequence[Image.Image | None]
    completion_ids: Sequence[Sequence[int]]  # sampled token ids, with the final eos when stopped
    old_logprobs: Sequence[Sequence[float]]  # the sampler's per-token log-probs, same lengths
    advantages: torch.Tensor  # [N] float

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        sizes = {len(self.questions), len(self.images), len(self.old_logprobs), n}
        if len(sizes) != 1:
            raise ValueError(
                f"questions, images, completion_ids and old_logprobs differ in length: "
                f"{len(self.questions)}, {len(self.images)}, {n}, {len(self.old_logprobs)}"
            )
        if n == 0:
            raise ValueError("a rollout batch needs at least one completion")
        if tuple(self.advantages.shape) != (n,):
            raise ValueError(f"advantages must have shape ({n},), got {tuple(self.advantages.shape)}")
        if not bool(torch.isfinite(self.advantages).all()):
            raise ValueError("advantages hold NaN or infinite values (group_advantages maps unscored rewards to 0)")
        bad = [i for i, (c, lp) in enumerate(zip(self.completion_ids, self.old_logprobs, strict=True)) if len(c) != len(lp)]
        if bad:
            raise ValueError(f"completion {bad[0]} has {len(self.completion_ids[bad[0]])} token ids but "
                             f"{len(self.old_logprobs[bad[0]])} log-probs ({len(bad)} such completion(s))")

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


@dataclass(frozen=True)
class TrainStats:
    """One step, averaged over its ``epochs`` passes (token-weighted over micro-batches)."""

    loss: float
    kl: float  # mean k3 KL to the reference per completion token
    clip_low: float  # fraction of tokens whose ratio was clipped below (A < 0)
    clip_high: float  # fraction clipped above (A > 0)
    grad_norm: float  # total gradient norm before clipping
    completion_tokens_mean: float
    seconds: float
    beta: float  # the KL coefficient this step trained with (the next may differ: grpo.target_kl)
    ratio_mean: float = 1.0  # mean importance ratio policy / sampler (1 when on-policy)
    skipped_passes: int = 0  # passes whose gradient was not finite: the optimizer step was skipped


@dataclass
class _Micro:
    """One micro-batch, encoded once per step and reused by the reference pass and every epoch."""

    batch: VLMBatch
    old: torch.Tensor  # [b, T] sampler log-probs, 0 on padding
    adv: torch.Tensor  # [b]
    mask: torch.Tensor  # [b, T] float
    weight: float  # factor on the micro-batch's loss (shard.micro_slices): sums to the whole batch's loss
    ref: torch.Tensor | None = None  # [b, T] reference log-probs
    counted: bool = True  # False for a distributed rank's padding micro-batch (weight 0, not in the stats)


class GRPOTrainer:
    """Trains ``vlm`` (taken over: with LoRA its model is wrapped in place) with GRPO."""

    def __init__(self, vlm: VLM, cfg: GRPOSection, *, seed: int = 0) -> None:
        if base_model(vlm.model) is not vlm.model:
            raise ValueError("pass the plain (not peft-wrapped) model; resume a trained adapter with load_state_dict")
        self.cfg = cfg
        self.seed = seed
        self.steps_done = 0
        self.beta = cfg.beta  # the KL coefficient in force; step() adapts it when grpo.target_kl is set
        self.kind = "lora" if cfg.lora else "full"
        if cfg.lora:
            model = add_lora(vlm.model, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                             target_modules=cfg.lora_target_modules, adapter_name=ADAPTER_NAME, seed=seed)
            self.policy = VLM(model, vlm.tokenizer, vlm.image_processor, system_prompt=vlm.processor.system_prompt)
            self._reference: VLM | None = None
        else:
            self.policy = vlm
            ref = copy.deepcopy(vlm.model).eval().requires_grad_(False)
            self._reference = VLM(ref, vlm.tokenizer, vlm.image_processor, system_prompt=vlm.processor.system_prompt)
        self._params = [p for p in self.policy.model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the policy has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self._params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---- the step ------------------------------------------------------------------------------
    def step(self, batch: RolloutBatch) -> TrainStats:
        """Reference log-probs once, then ``cfg.epochs`` passes of loss, backward, clip and AdamW step;
        then, with ``cfg.target_kl``, beta adapted for the next step."""
        cfg = self.cfg
        start = time.perf_counter()
        beta = self.beta
        longest = max(len(c) for c in batch.completion_ids)
        if longest > cfg.max_new_tokens:
            # dr_grpo's normaliser assumes no completion exceeds max_new_tokens; a longer one means the
            # sampler ran with other settings than this trainer.
            raise ValueError(f"a completion has {longest} tokens, more than max_new_tokens={cfg.max_new_tokens}")
        n_items = float(batch.num_tokens)
        if n_items == 0:
            raise ValueError("the rollout batch holds no completion tokens")
        model = self.policy.model
        was_training = model.training
        model.eval()
        try:
            micros = self._encode(batch)
            with torch.no_grad(), self._reference_scope() as ref_vlm:
                for mb in micros:
                    mb.ref = ref_vlm.completion_logprobs(mb.batch, cfg.temperature)
            totals = {"loss": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "ratio_mean": 0.0, "grad_norm": 0.0}
            skipped = 0
            for _ in range(cfg.epochs):
                pass_stats, finite = self._pass(micros, n_items)
                skipped += not finite
                for k, v in pass_stats.items():
                    totals[k] += v / cfg.epochs
        finally:
            model.train(was_training)
        self.steps_done += 1
        if cfg.target_kl is not None and cfg.beta > 0:
            self.beta = ops.adaptive_beta(beta, totals["kl"], cfg.target_kl, cfg.kl_horizon)
        return TrainStats(
            loss=totals["loss"],
            kl=totals["kl"],
            clip_low=totals["clip_low"],
            clip_high=totals["clip_high"],
            grad_norm=totals["grad_norm"],
            completion_tokens_mean=n_items / len(batch.completion_ids),
            seconds=time.perf_counter() - start,
            beta=beta,
            ratio_mean=totals["ratio_mean"],
            skipped_passes=skipped,
        )

    def _pass(self, micros: list[_Micro], n_items: float) -> tuple[dict[str, float], bool]:
        """One pass over all micro-batches with gradient accumulation, then one optimizer step."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        out = {"loss": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "ratio_mean": 0.0}
        train_vlm = self._train_vlm()
        for i, mb in enumerate(micros):
            with self._grad_sync(last=i == len(micros) - 1):
                logp = train_vlm.completion_logprobs(mb.batch, cfg.temperature)
                loss, stats = ops.grpo_loss(
                    logp, mb.old, mb.ref, mb.adv, mb.mask,
                    beta=self.beta,
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    loss_type=cfg.loss_type,
                    max_completion_length=cfg.max_new_tokens,
                    num_items_in_batch=n_items,
                )
                (loss * (mb.weight * self._loss_scale)).backward()
            if not mb.counted:
                continue
            out["loss"] += float(loss.detach()) * mb.weight
            share = float(mb.mask.sum()) / n_items  # stats are token means: weigh by tokens
            for k in ("kl", "clip_low", "clip_high", "ratio_mean"):
                out[k] += stats[k] * share
        out = self._reduce_stats(out)
        norm = self._clip_gradients()
        out["grad_norm"] = norm
        finite = math.isfinite(norm)
        if finite:
            self.optimizer.step()
        else:
            # One bad batch must not write NaN into the weights; the run loop sees skipped_passes.
            log.warning("GRPO pass skipped: gradient norm is %s", norm)
        self.optimizer.zero_grad(set_to_none=True)
        return out, finite

    # Hooks a data-parallel trainer (grpo/distributed.py) overrides; in one process they do nothing.
    _loss_scale = 1.0  # the engines average gradients over ranks: a world of W scales each loss by W

    def _train_vlm(self) -> VLM:
        """The policy as the gradient pass calls it (a DDP wrapper under DDP)."""
        return self.policy

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's forward/backward (DDP and FSDP skip the reduction until ``last``)."""
        return contextlib.nullcontext()

    def _reduce_stats(self, out: dict[str, float]) -> dict[str, float]:
        """This process's share of a pass's statistics -> the whole batch's."""
        return out

    def _clip_gradients(self) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self._params, self.cfg.max_grad_norm))

    def _micro_slices(self, batch: RolloutBatch) -> list[shard.MicroSlice]:
        """The micro-batches this process trains (one process: all of them)."""
        lengths = [len(c) for c in batch.completion_ids]
        return shard.micro_slices(lengths, self.cfg.micro_batch_size, self.cfg.loss_type)

    def _encode(self, batch: RolloutBatch) -> list[_Micro]:
        device, dtype = self.policy.device, self.policy.dtype
        micros = []
        for sl in self._micro_slices(batch):
            s, e = sl.start, sl.end
            vb = self.policy.processor.completion_batch(
                list(batch.questions[s:e]), list(batch.images[s:e]), [list(c) for c in batch.completion_ids[s:e]]
            ).to(device, dtype)
            old = torch.zeros(vb.completion_ids.shape, dtype=torch.float32)
            for i, lp in enumerate(batch.old_logprobs[s:e]):
                old[i, : len(lp)] = torch.tensor([float(x) for x in lp], dtype=torch.float32)
            micros.append(
                _Micro(
                    batch=vb,
                    old=old.to(device),
                    adv=batch.advantages[s:e].detach().float().to(device),
                    mask=vb.completion_mask.float(),
                    weight=sl.weight,
                )
            )
        return micros

    @contextlib.contextmanager
    def _reference_scope(self):
        if self._reference is not None:
            yield self._reference
        else:
            with self.policy.adapter_disabled():
                yield self.policy

    def reference_logprobs(
        self, questions: Sequence[str], images: Sequence[Image.Image | None], completions: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """Per-token log-probs of the reference (initial) policy at ``cfg.temperature``, without grad."""
        with torch.no_grad(), self._reference_scope() as ref_vlm:
            return ref_vlm.sequence_logprobs(questions, images, completions, self.cfg.temperature)

    # ---- weights out, state in and out ---------------------------------------------------------
    def weights_payload(self) -> tuple[str, bytes, str]:
        """(kind "lora" | "full", safetensors payload, adapter_config.json text or "") for UpdateWeights."""
        # Imported here: the encoders' module pulls in the gRPC error table, which training does not need.
        from services.common.weights_codec import encode_full_weights, encode_lora_adapter

        if self.kind == "lora":
            payload, config_json = encode_lora_adapter(self.policy.model, ADAPTER_NAME)
            return "lora", payload, config_json
        return "full", encode_full_weights(self.policy.model), ""

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.policy.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        """Trained parameters, optimizer state and step count (copies: later steps do not change them).

        Loading it into a trainer built the same way (same initial model, config and seed) continues
        bit-identically on CPU. The reference policy is not saved: it is the initial model.
        """
        return {
            "format": _STATE_FORMAT,
            "kind": self.kind,
            "steps_done": self.steps_done,
            "beta": self.beta,
            "params": {n: self._full_copy(p) for n, p in self._named_trainable().items()},
            "optimizer": self._full_optimizer_state(),
        }

    # How full (unsharded) tensors come out of and go back into the trainer; FSDP overrides these,
    # so that a checkpoint has the same layout whatever the world size that wrote or reads it.
    def _full_copy(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone()

    def _full_optimizer_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.optimizer.state_dict())

    def _load_params(self, params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        # The optimizer keeps the tensors it is given; a copy keeps the caller's state unchanged.
        self.optimizer.load_state_dict(copy.deepcopy(state))

    def export_policy(self) -> VLM:
        """The trained policy as a plain model (adapter merged into a copy), for saving and evaluation."""
        model = copy.deepcopy(self.policy.model)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return VLM(model, self.policy.tokenizer, self.policy.image_processor)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"trainer state format {state.get('format')!r} is not {_STATE_FORMAT}")
        if state.get("kind") != self.kind:
            raise ValueError(f"trainer state is for {state.get('kind')!r} training, this trainer does {self.kind!r}")
        params = self._named_trainable()
        saved = state["params"]
        if set(saved) != set(params):
            diff = sorted(set(saved) ^ set(params))
            raise ValueError(f"trainer state does not match the trained parameters ({len(diff)} differ, e.g. {diff[0]})")
        wrong = [n for n, p in params.items() if tuple(saved[n].shape) != tuple(p.shape)]
        if wrong:
            raise ValueError(f"trainer state has {len(wrong)} parameter(s) of the wrong shape, e.g. {wrong[0]}")
        self._load_params(params, saved)
        self._load_optimizer_state(state["optimizer"])
        self.steps_done = int(state["steps_done"])
        self.beta = float(state.get("beta", self.cfg.beta))


__all__ = ["ADAPTER_NAME", "GRPOTrainer", "RolloutBatch", "TrainStats"]
