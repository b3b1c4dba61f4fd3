"""The GRPO trainer over a torch.distributed process group (torchrun): FSDP2 or DDP, rank 0 in charge.

Rank 0 runs the MoR loop (fan-out, router, sampler push, checkpoints, run-control API) and uses this
trainer like the one-process ``GRPOTrainer``. Every call that needs all ranks (a step, loading a
state, gathering a sharded state) is a *command*: rank 0 broadcasts its name and arguments
(``broadcast_object_list``; a step's arguments are the whole step's rollouts) and then takes part in
it; the other ranks sit in ``serve()``, receive commands and take part, until rank 0 sends ``stop``.

The maths is the one-process maths: every rank holds the whole step's rollouts, trains its rows
(``shard.micro_slices``: the one-process micro-batches cut at the rank boundaries, each weighted so the
ranks' losses add up to the one-process loss), and multiplies its loss by the world size because the
engines average gradients over ranks. Each rank runs the same number of forwards (a rank with fewer
micro-batches repeats one with weight 0), because FSDP2 gathers parameters collectively in every
forward. Checkpoints have the one-process layout (full tensors; the optimizer state indexed by the
trained parameters in order), so a state written by any world size loads into any other.

FSDP2 (``fully_shard`` on every decoder/vision block, then on the root, over a 1-D device mesh) shards
parameters, gradients and AdamW state; DDP keeps a full replica per rank and all-reduces gradients
once per pass (``no_sync`` on all micro-batches but the last).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image

from services.common.config.run import GRPOSection
from services.common.models.vlm import VLM, base_model
from services.orchestrator.grpo import shard
from services.orchestrator.grpo.trainer import ADAPTER_NAME, GRPOTrainer, RolloutBatch, TrainStats, _Micro
from services.orchestrator.parallel import ParallelContext

log = logging.getLogger(__name__)

STRATEGIES = ("fsdp", "ddp")
_STOP = "stop"


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_blocks(model: torch.nn.Module, mesh: Any) -> list[torch.nn.Parameter]:
    """fully_shard every decoder block of the language model, then the root; returns the replicated parameters.

    Blocks are the classes HF lists in ``_no_split_modules`` inside ``get_decoder()``: the unit of
    FSDP's all-gather (one block's full parameters exist at a time). Everything outside the language
    model (the vision tower, LLaVA's projector) stays a full replica on every rank, outside FSDP:
    it runs only for micro-batches with images, and FSDP needs every rank to gather (and
    reduce-scatter) the same groups in the same order. Its gradients, when trained, are all-reduced
    by the trainer (``_sync_replicated``).
    """
    from torch.distributed.fsdp import fully_shard

    base = base_model(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    decoder = base.get_decoder()
    blocks = [m for m in decoder.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(base).__name__}'s decoder has no block of the classes in _no_split_modules")
    in_decoder = {id(p) for p in decoder.parameters()}
    replicated = [p for p in model.parameters() if id(p) not in in_decoder]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params=set(replicated))
    return replicated


class DistributedGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` over ``ctx``'s process group; every rank builds it from the same initial model."""

    def __init__(self, vlm: VLM, cfg: GRPOSection, ctx: ParallelContext, strategy: str = "fsdp", *,
                 seed: int = 0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown distributed strategy {strategy!r}; supported: {', '.join(STRATEGIES)}")
        self.ctx = ctx
        self.strategy = strategy
        self._loss_scale = float(ctx.world_size)
        # FSDP leaves no rank with a full model; rank 0 keeps a CPU copy of the initial one to merge the
        # trained weights into when the run exports its final policy.
        self._export_base = (copy.deepcopy(vlm.model).to("cpu")
                             if strategy == "fsdp" and ctx.is_main else None)
        super().__init__(vlm, cfg, seed=seed)
        self._check_same_start()
        model = self.policy.model
        self._ddp: Any = None
        self._replicated: list[torch.nn.Parameter] = []
        if strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
            self._replicated = [p for p in shard_blocks(model, mesh) if p.requires_grad]
            if self._reference is not None:
                shard_blocks(self._reference.model, mesh)
            log.info("FSDP2 over %d ranks (%d trained parameters left replicated)", ctx.world_size, len(self._replicated))
        else:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: a batch without images leaves the vision tower (trained when
            # grpo.lora is false) out of the graph.
            self._ddp = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=True)
        # The trained parameters are now the sharded ones (FSDP replaces them): a new optimizer over them.
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _check_same_start(self) -> None:
        """Every rank must start from the same weights (built from the same config and seed)."""
        with torch.no_grad():
            total = sum(float(p.double().sum()) for p in self.policy.model.parameters())
        t = torch.tensor([total, -total], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if float(t[0]) != total or float(-t[1]) != total:
            raise RuntimeError(f"rank {self.ctx.rank} built another initial policy than its peers "
                               "(same policy config and seed on every rank?)")

    # ---- commands: rank 0 calls, every rank runs ---------------------------------------------
    def _command(self, name: str, *args: Any) -> Any:
        if not self.ctx.is_main:
            raise RuntimeError(f"{name}: only rank 0 drives the trainer; the other ranks run serve()")
        dist.broadcast_object_list([(name, args)], src=0)
        return getattr(self, "_do_" + name)(*args)

    def serve(self) -> int:
        """Ranks > 0: take part in rank 0's commands until it stops; returns the number of commands run."""
        done = 0
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            name, args = box[0]
            if name == _STOP:
                return done
            getattr(self, "_do_" + name)(*args)
            done += 1

    def close(self) -> None:
        """Rank 0: release the workers from serve()."""
        if self.ctx.is_main:
            dist.broadcast_object_list([(_STOP, ())], src=0)

    def step(self, batch: RolloutBatch) -> TrainStats:
        # beta travels with the step: every rank adapts its copy from the same all-reduced KL, so the
        # copies agree; sending rank 0's (the one checkpoints save) makes them agree by construction.
        return self._command("step", batch, self.beta)

    def _do_step(self, batch: RolloutBatch, beta: float) -> TrainStats:
        self.beta = beta
        return GRPOTrainer.step(self, batch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._command("load_state_dict", state)

    def _do_load_state_dict(self, state: dict[str, Any]) -> None:
        GRPOTrainer.load_state_dict(self, state)

    def state_dict(self) -> dict[str, Any]:
        # DDP ranks hold full replicas: rank 0 alone has everything. FSDP gathers from every rank.
        return GRPOTrainer.state_dict(self) if self._ddp is not None else self._command("state_dict")

    def _do_state_dict(self) -> dict[str, Any]:
        return GRPOTrainer.state_dict(self)

    def weights_payload(self) -> tuple[str, bytes, str]:
        return GRPOTrainer.weights_payload(self) if self._ddp is not None else self._command("weights_payload")

    def _do_weights_payload(self) -> tuple[str, bytes, str] | None:
        from services.common.weights_codec import encode_full_weights, encode_lora_adapter

        full = self._full_model_state()
        if not self.ctx.is_main:
            return None
        if self.kind == "lora":
            payload, config_json = encode_lora_adapter(self.policy.model, ADAPTER_NAME, state_dict=full)
            return "lora", payload, config_json
        return "full", encode_full_weights(self.policy.model, state_dict=full), ""

    def export_policy(self) -> VLM:
        return GRPOTrainer.export_policy(self) if self._ddp is not None else self._command("export_policy")

    def _do_export_policy(self) -> VLM | None:
        full = self._full_model_state()
        if not self.ctx.is_main:
            return None
        assert self._export_base is not None
        model = copy.deepcopy(self._export_base)
        if self.kind == "lora":
            from peft import get_peft_model

            model = get_peft_model(model, self.policy.model.peft_config[ADAPTER_NAME], adapter_name=ADAPTER_NAME)
        missing, unexpected = model.load_state_dict(full, strict=False)
        if unexpected or [k for k in missing if k in dict(model.named_parameters())]:
            raise RuntimeError(f"export: state does not fit the policy ({len(missing)} missing, {len(unexpected)} unexpected)")
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return VLM(model, self.policy.tokenizer, self.policy.image_processor)

    def reference_logprobs(self, questions: Sequence[str], images: Sequence[Image.Image | None],
                           completions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        return self._command("reference_logprobs", questions, images, completions)

    def _do_reference_logprobs(self, questions, images, completions) -> list[torch.Tensor]:
        return GRPOTrainer.reference_logprobs(self, questions, images, completions)

    # ---- hooks of the one-process step ---------------------------------------------------------
    def _micro_slices(self, batch: RolloutBatch) -> list[shard.MicroSlice]:
        lengths = [len(c) for c in batch.completion_ids]
        return shard.micro_slices(lengths, self.cfg.micro_batch_size, self.cfg.loss_type,
                                  self.ctx.world_size, self.ctx.rank)

    def _encode(self, batch: RolloutBatch) -> list[_Micro]:
        micros = super()._encode(batch)
        lengths = [len(c) for c in batch.completion_ids]
        most = max(len(shard.micro_slices(lengths, self.cfg.micro_batch_size, self.cfg.loss_type,
                                          self.ctx.world_size, r)) for r in range(self.ctx.world_size))
        # Padding: a repeat of a micro-batch that adds nothing (weight 0, left out of the stats), so
        # every rank runs as many forwards and backwards as the busiest one.
        micros += [dataclasses.replace(micros[0], weight=0.0, counted=False) for _ in range(most - len(micros))]
        return micros

    def _train_vlm(self) -> VLM:
        if self._ddp is None:
            return self.policy  # FSDP hooks live on the model itself
        vlm = copy.copy(self.policy)
        vlm.model = self._ddp
        return vlm

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        # DDP: one all-reduce per pass. FSDP reduce-scatters every micro-batch, so that accumulated
        # gradients stay sharded (skipping it would keep full gradients on every rank).
        if self._ddp is not None and not last:
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    def _reduce_stats(self, out: dict[str, float]) -> dict[str, float]:
        keys = sorted(out)
        t = torch.tensor([out[k] for k in keys], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t)  # each rank holds its weighted share: the sum is the whole batch's
        return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}

    def _clip_gradients(self) -> float:
        if self._ddp is not None:
            return super()._clip_gradients()  # gradients are all-reduced: the same on every rank
        self._sync_replicated()
        rep = {id(p) for p in self._replicated}
        sharded = [p.grad for p in self._params if p.grad is not None and id(p) not in rep]
        total = torch.nn.utils.get_total_norm(sharded, norm_type=2.0)
        if _is_dtensor(total):
            total = total.full_tensor()  # the norm over all shards (a collective)
        replicated = [p.grad for p in self._replicated]
        if replicated:
            total = torch.linalg.vector_norm(torch.stack([total, torch.nn.utils.get_total_norm(replicated)]))
        # Sharded and plain gradients are clipped apart: foreach ops refuse a mix of DTensor and Tensor.
        plain = [p for p in self._params if id(p) in rep]
        torch.nn.utils.clip_grads_with_norm_([p for p in self._params if id(p) not in rep], self.cfg.max_grad_norm, total)
        if plain:
            torch.nn.utils.clip_grads_with_norm_(plain, self.cfg.max_grad_norm, total)
        return float(total)

    def _sync_replicated(self) -> None:
        """Average the gradients of the parameters FSDP leaves alone (a rank without images has none)."""
        for p in self._replicated:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(g)
            p.grad = g / self.ctx.world_size

    def _full_copy(self, t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor().detach().cpu().clone() if _is_dtensor(t) else t.detach().cpu().clone()

    def _full_optimizer_state(self) -> dict[str, Any]:
        sd = self.optimizer.state_dict()
        state = {i: {k: self._full_copy(v) if torch.is_tensor(v) else copy.deepcopy(v) for k, v in s.items()}
                 for i, s in sorted(sd["state"].items())}
        return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

    def _local(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``full`` laid out like ``like`` (its shard, when ``like`` is a DTensor); no communication."""
        full = full.to(like.device)
        if not _is_dtensor(like):
            return full
        from torch.distributed.tensor import distribute_tensor

        # Every rank holds the full tensor (rank 0 broadcast the state): each takes its shard locally.
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)

    def _load_params(self, params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self._local(saved[n].to(p.dtype), p))

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if len(state["state"]) > len(self._params):
            raise ValueError(f"optimizer state holds {len(state['state'])} parameters, the trainer trains {len(self._params)}")
        local = {}
        for i, s in state["state"].items():
            p = self._params[int(i)]
            local[int(i)] = {k: self._local(v, p) if torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape)
                             else copy.deepcopy(v) for k, v in s.items()}
        self.optimizer.load_state_dict({"state": local, "param_groups": copy.deepcopy(state["param_groups"])})

    def _full_model_state(self) -> dict[str, torch.Tensor]:
        """Every tensor of the policy model, full and on CPU, on rank 0 (empty elsewhere); a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.policy.model,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


__all__ = ["STRATEGIES", "DistributedGRPOTrainer", "shard_blocks"]
