"""The transformers backend: batched grouped sampling through `VLM.generate`, LoRA/full weight swaps.

All model work runs on one dedicated thread, so generations and swaps never overlap inside torch
and the asyncio loop stays free for gRPC. Payload parsing and validation run on another thread,
so an update is checked while generations go on. A request of B prompts x G completions is one
`generate` call of B*G rows (sliced at `hf.max_batch_rows`); each slice takes its own seed derived
from the request's, so the same request and seed give the same completions on CPU.

Weights: version 0 is the initial model. A LoRA adapter is applied on top of the current base
weights with peft: an adapter with the same layout as the serving one is copied into it in place
(with a snapshot to roll back to), another layout is added as a new adapter, activated, and the
old one deleted. Full weights replace the base parameters (any active adapter is removed first).
Image and other special tokens are never generated: `VLM.generate` suppresses them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import torch

from services.common.completions import Completion
from services.common.config.services import HFBackendSection, SamplerSettings
from services.common.config.variants import SamplerBackendName
from services.common.models import ModelConfig
from services.policy_sampler.backends.base import GenerationCancelled, ModelFacts, SamplerBackend
from services.policy_sampler.requests import SEED_MODULUS, PromptInput, PromptRules, SamplingOptions
from services.policy_sampler.weights import (
    FullUpdate,
    LoraUpdate,
    PreparedWeights,
    WeightsHeader,
    prepare_full,
    prepare_lora,
)

log = logging.getLogger(__name__)


def model_facts(cfg: ModelConfig, model: Any) -> ModelFacts:
    """GetInfo's model name (checkpoint path or arch-preset) and architecture class name."""
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    name = str(cfg.path) if cfg.path is not None else f"{cfg.arch}-{cfg.preset}"
    return ModelFacts(name=name, arch=archs[0])


def weightless_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The architecture of a transformers model on the meta device (names and shapes, no memory)."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(model.config)


def slices(num_prompts: int, group_size: int, max_rows: int) -> list[range]:
    """Consecutive prompt ranges of at most max(1, max_rows // group_size) prompts each."""
    per = max(1, max_rows // group_size)
    return [range(s, min(s + per, num_prompts)) for s in range(0, num_prompts, per)]


class HFBackend(SamplerBackend):
    """transformers generate on CPU (or one GPU), one model thread."""

    name: ClassVar[SamplerBackendName] = "hf"
    ADAPTER_PREFIX = "policy"

    @classmethod
    def build(cls, settings: SamplerSettings) -> HFBackend:
        return cls(settings.model, settings.hf)

    def __init__(self, model: ModelConfig, hf: HFBackendSection | None = None, *, vlm: Any = None) -> None:
        """`vlm`: an already built `VLM` to serve instead of building one from `model` (tests, benchmarks)."""
        self._model_cfg = model
        self._hf = hf or HFBackendSection()
        self._vlm = vlm
        self._base = None  # the transformers model under any peft wrapper
        self._skeleton: torch.nn.Module | None = None  # the plain architecture on the meta device
        self._peft: Any = None  # the PeftModel once an adapter was applied
        self._adapter: str | None = None
        self._adapter_key: str | None = None
        self._adapter_count = 0
        self._rules = PromptRules()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler-model")
        self._prepare_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler-weights")

    # --- life cycle ---------------------------------------------------------------------------

    async def load(self) -> ModelFacts:
        return await self._run(self._load_sync)

    def _load_sync(self) -> ModelFacts:
        from services.common.models import build_vlm
        from services.common.models.vlm import base_model

        if self._hf.torch_threads is not None:
            torch.set_num_threads(self._hf.torch_threads)
        if self._vlm is None:
            self._vlm = build_vlm(self._model_cfg)
        self._vlm.to(self._hf.device)
        self._vlm.eval()
        self._base = base_model(self._vlm.model)
        self._skeleton = weightless_copy(self._base)
        for p in self._vlm.model.parameters():
            p.requires_grad_(False)
        facts = model_facts(self._model_cfg, self._base)
        self._rules = PromptRules.of_tokenizer(self._vlm.tokenizer)
        log.info("hf backend: %s (%s) on %s, %.2fM parameters", facts.name, facts.arch, self._hf.device,
                 self._vlm.num_parameters() / 1e6)
        return facts

    def prompt_rules(self) -> PromptRules:
        return self._rules

    async def close(self) -> None:
        self._model_thread.shutdown(wait=True, cancel_futures=True)
        self._prepare_thread.shutdown(wait=False, cancel_futures=True)

    @property
    def vlm(self) -> Any:
        """The served VLM (its model is peft-wrapped once an adapter was applied)."""
        if self._vlm is None:
            raise RuntimeError("hf backend: load() first")
        return self._vlm

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, fn, *args)

    # --- generation ---------------------------------------------------------------------------

    async def generate(
        self, prompts: Sequence[PromptInput], group_size: int, sampling: SamplingOptions
    ) -> list[list[Completion]]:
        stop = threading.Event()
        try:
            return await self._run(self._generate_sync, list(prompts), group_size, sampling, stop)
        except asyncio.CancelledError:
            # The caller went away (deadline passed or cancelled). A call still waiting for the
            # model thread never starts (cancelling the future unqueues it); a running one ends at
            # its next decoding step, so the next caller does not wait for work nobody will read.
            stop.set()
            raise

    def _generate_sync(self, prompts: list[PromptInput], group_size: int, sampling: SamplingOptions,
                       stop: threading.Event | None = None) -> list[list[Completion]]:
        vlm = self.vlm
        out: list[list[Completion]] = []
        for i, part in enumerate(slices(len(prompts), group_size, self._hf.max_batch_rows)):
            if stop is not None and stop.is_set():
                raise GenerationCancelled("the caller went away")
            chunk = [prompts[j] for j in part]
            groups = vlm.generate(
                [p.text for p in chunk],
                [p.image for p in chunk],
                num_return_sequences=group_size,
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature if not sampling.greedy else 1.0,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                do_sample=not sampling.greedy,
                seed=(sampling.seed + i) % SEED_MODULUS,
                should_stop=None if stop is None else stop.is_set,
            )
            out.extend(
                [Completion(g.text, tuple(g.token_ids), tuple(g.logprobs), g.finish_reason) for g in group] for group in groups
            )
        return out

    # --- weights ------------------------------------------------------------------------------

    async def prepare_weights(self, header: WeightsHeader, payload: bytes) -> PreparedWeights:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare_thread, self._prepare_sync, header, payload)

    def _prepare_sync(self, header: WeightsHeader, payload: bytes) -> PreparedWeights:
        dtype = self.vlm.dtype
        if header.kind == "lora":
            return prepare_lora(header, payload, self._base.config, dtype)
        return prepare_full(header, payload, self._skeleton, dtype)

    async def commit_weights(self, prepared: PreparedWeights) -> None:
        await self._run(self._commit_sync, prepared)

    def _commit_sync(self, prepared: PreparedWeights) -> None:
        with torch.no_grad():
            if isinstance(prepared, LoraUpdate):
                self._commit_lora(prepared)
            elif isinstance(prepared, FullUpdate):
                self._commit_full(prepared)
            else:  # pragma: no cover - PreparedWeights is closed
                raise TypeError(f"unknown update {type(prepared).__name__}")

    def _commit_lora(self, update: LoraUpdate) -> None:
        from peft import get_peft_model, set_peft_model_state_dict

        from services.common.models.vlm import VLM

        vlm = self.vlm
        device = vlm.device
        tensors = {k: v.to(device) for k, v in update.tensors.items()}
        if self._peft is not None and update.config_key == self._adapter_key:
            self._load_in_place(tensors)
            return
        self._adapter_count += 1
        name = f"{self.ADAPTER_PREFIX}{self._adapter_count}"
        if self._peft is None:
            peft_model = get_peft_model(self._base, update.config, adapter_name=name)
            try:
                set_peft_model_state_dict(peft_model, tensors, adapter_name=name)
            except BaseException:
                peft_model.unload()  # back to the plain base model
                raise
            self._peft = peft_model
            self._vlm = VLM(peft_model, vlm.tokenizer, vlm.image_processor)
        else:
            old = self._adapter
            self._peft.add_adapter(name, update.config)
            try:
                set_peft_model_state_dict(self._peft, tensors, adapter_name=name)
            except BaseException:
                self._peft.delete_adapter(name)
                raise
            self._peft.set_adapter(name)
            if old is not None:
                self._peft.delete_adapter(old)
        for p in self._peft.parameters():
            p.requires_grad_(False)
        self._peft.eval()
        self._adapter, self._adapter_key = name, update.config_key

    def _load_in_place(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy an adapter of the serving layout into the serving adapter; restore it on failure."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        snapshot = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self._peft, adapter_name=self._adapter).items()}
        try:
            set_peft_model_state_dict(self._peft, tensors, adapter_name=self._adapter)
        except BaseException:
            set_peft_model_state_dict(self._peft, snapshot, adapter_name=self._adapter)
            raise

    def _commit_full(self, update: FullUpdate) -> None:
        from services.common.models.vlm import VLM

        vlm = self.vlm
        if self._peft is not None:
            self._base = self._peft.unload()  # drop the adapter: full weights replace the policy
            self._peft = None
            self._adapter = self._adapter_key = None
            self._vlm = vlm = VLM(self._base, vlm.tokenizer, vlm.image_processor)
        params = dict(self._base.named_parameters())
        for name, value in update.tensors.items():
            params[name].copy_(value.to(params[name].device))
        self._base.eval()


__all__ = ["HFBackend", "model_facts", "slices", "weightless_copy"]
