"""The vLLM backend (GPU only, optional extra `pip install 'mor[vllm]'`).

One `AsyncLLMEngine` serves the policy. A Generate of B prompts becomes B engine requests with
`n = G` (vLLM fans each out into G children sharing the prompt's KV cache), `logprobs=0` (the
sampled token's log-prob) and `logprobs_mode="processed_logprobs"`, so the log-probs are those of
the distribution actually sampled from (after temperature and top-k/top-p), as in the hf backend.
Images go in as `multi_modal_data`; the prompt text is rendered with the same chat template as
the trainer's `VLMProcessor`, and `allowed_token_ids` keeps image/special tokens out of answers.

Weights: a LoRA adapter is validated exactly as in the hf backend, written as a PEFT folder and
pre-loaded (`add_lora`) while generations go on; the swap only changes which `LoRARequest` new
requests carry, under the version gate. Full weights are validated, written to a safetensors file
and loaded on every worker through `collective_rpc` into `FullWeightsExtension` (vllm_worker.py).

`import vllm` happens inside `load()`, so this module imports (and its pure helpers are tested)
on machines without vllm; `check_environment()` turns a missing extra or GPU into a ConfigError.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from services.common.completions import Completion
from services.common.config import ConfigError
from services.common.config.services import SamplerSettings, SamplingDefaultsSection, VLLMBackendSection
from services.common.config.variants import SamplerBackendName
from services.common.errors import VersionMismatch
from services.common.models import ModelConfig
from services.policy_sampler.backends.base import ModelFacts, SamplerBackend
from services.policy_sampler.backends.hf import model_facts
from services.policy_sampler.requests import SEED_MODULUS, PromptInput, PromptRules, SamplingOptions
from services.policy_sampler.weights import (
    FullUpdate,
    LoraUpdate,
    PreparedWeights,
    WeightsHeader,
    prepare_full,
    prepare_lora,
    write_adapter_dir,
)

log = logging.getLogger(__name__)

WORKER_EXTENSION = "services.policy_sampler.backends.vllm_worker.FullWeightsExtension"
LOAD_FULL_WEIGHTS = "mor_load_full_weights"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_environment() -> None:
    """Start-up check for backend: vllm (the extra is installed and a CUDA GPU is visible)."""
    if not vllm_available():
        raise ConfigError("backend: vllm needs the vllm extra (pip install 'mor[vllm]', GPU machines only); "
                          "use backend: hf on CPU")
    if not torch.cuda.is_available():
        raise ConfigError("backend: vllm needs a CUDA GPU and none is visible; use backend: hf on CPU")


def sampling_kwargs(
    sampling: SamplingOptions,
    group_size: int,
    prompt_index: int,
    allowed_token_ids: Sequence[int],
    stop_token_ids: Sequence[int],
) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one prompt of a request.

    vLLM seeds child i of an n-request with seed + i, so prompt p takes seed + p * G: every
    completion of the request gets its own seed, and the same request reproduces.
    """
    return {
        "n": group_size,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        "max_tokens": sampling.max_new_tokens,
        "seed": (sampling.seed + prompt_index * group_size) % SEED_MODULUS,
        "logprobs": 0,
        "allowed_token_ids": list(allowed_token_ids),
        "stop_token_ids": list(stop_token_ids),
        "skip_special_tokens": True,
        "repetition_penalty": 1.0,
    }


def completion_sample(output: Any) -> Completion:
    """A vLLM CompletionOutput -> Completion (the log-prob of each sampled token)."""
    token_ids = tuple(int(t) for t in output.token_ids)
    logprobs = tuple(float(step[t].logprob) for step, t in zip(output.logprobs or (), token_ids, strict=True))
    reason: Literal["stop", "length"] = "stop" if output.finish_reason == "stop" else "length"
    return Completion(output.text, token_ids, logprobs, reason)


class VLLMBackend(SamplerBackend):
    """vLLM AsyncLLMEngine with LoRA hot-swap through LoRARequest."""

    name: ClassVar[SamplerBackendName] = "vllm"

    @classmethod
    def build(cls, settings: SamplerSettings) -> VLLMBackend:
        check_environment()  # names what is missing: the extra or a GPU
        return cls(settings.model, settings.vllm, settings.sampling)

    def __init__(self, model: ModelConfig, cfg: VLLMBackendSection | None = None,
                 defaults: SamplingDefaultsSection | None = None) -> None:
        self._model_cfg = model
        self._cfg = cfg or VLLMBackendSection()
        self._defaults = defaults or SamplingDefaultsSection()
        self._engine: Any = None
        self._meta: Any = None  # a VLM on the meta device: chat template, eos and suppressed ids
        self._skeleton: torch.nn.Module | None = None
        self._allowed: list[int] = []
        self._rules = PromptRules()
        self._lora: Any = None  # the LoRARequest new requests carry; None serves the base weights
        self._own_work_dir = self._cfg.work_dir is None
        self._work_dir = Path(self._cfg.work_dir) if self._cfg.work_dir else Path(tempfile.mkdtemp(prefix="mor-vllm-"))
        self._dtype = torch.bfloat16 if model.dtype == "bfloat16" else torch.float32

    # --- life cycle ---------------------------------------------------------------------------

    async def load(self) -> ModelFacts:
        check_environment()
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        model_dir = await asyncio.to_thread(self._model_dir)
        await asyncio.to_thread(self._load_meta, model_dir)
        args = AsyncEngineArgs(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=self._model_cfg.dtype,
            seed=self._model_cfg.seed,
            enable_lora=True,
            max_lora_rank=self._cfg.max_lora_rank,
            max_loras=2,  # the serving adapter and the one being swapped in
            gpu_memory_utilization=self._cfg.gpu_memory_utilization,
            max_model_len=self._cfg.max_model_len,
            max_num_seqs=self._cfg.max_num_seqs,
            tensor_parallel_size=self._cfg.tensor_parallel_size,
            enforce_eager=self._cfg.enforce_eager,
            limit_mm_per_prompt={"image": 1},
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # we own sampling defaults, not the checkpoint
            worker_extension_cls=WORKER_EXTENSION,
        )
        self._engine = AsyncLLMEngine.from_engine_args(args)
        facts = model_facts(self._model_cfg, self._skeleton)
        log.info("vllm backend: %s (%s) from %s", facts.name, facts.arch, model_dir)
        return facts

    def _model_dir(self) -> Path:
        """The checkpoint vLLM loads: the configured path, or the preset built and saved once."""
        if self._model_cfg.path is not None:
            return Path(self._model_cfg.path)
        from services.common.models import build_vlm

        out = self._work_dir / "base"
        if not (out / "config.json").is_file():
            build_vlm(self._model_cfg).save(out)
        return out

    def _load_meta(self, model_dir: Path) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        from services.common.models.vlm import VLM

        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForImageTextToText.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True, backend="pil")
        self._meta = VLM(skeleton, tokenizer, image_processor)
        self._skeleton = skeleton
        suppressed = set(self._meta.suppress_ids)
        self._allowed = [i for i in range(self._meta.vocab_size) if i not in suppressed]
        self._rules = PromptRules.of_tokenizer(tokenizer)

    def prompt_rules(self) -> PromptRules:
        return self._rules

    async def close(self) -> None:
        if self._engine is not None:
            shutdown = getattr(self._engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self._engine = None
        if self._own_work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    # --- generation ---------------------------------------------------------------------------

    async def generate(
        self, prompts: Sequence[PromptInput], group_size: int, sampling: SamplingOptions
    ) -> list[list[Completion]]:
        lora = self._lora  # fixed for the whole request: the gate keeps it from changing meanwhile
        return list(await asyncio.gather(
            *(self._one(p, i, group_size, sampling, lora) for i, p in enumerate(prompts))
        ))

    async def _one(self, prompt: PromptInput, index: int, group_size: int, sampling: SamplingOptions,
                   lora: Any) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            **sampling_kwargs(sampling, group_size, index, self._allowed, self._meta.eos_ids),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        text = self._meta.processor.prompt_text(prompt.text, prompt.image is not None)
        inputs: dict[str, Any] = {"prompt": text}
        if prompt.image is not None:
            inputs["multi_modal_data"] = {"image": prompt.image}
        final = None
        async for out in self._engine.generate(inputs, params, request_id=uuid.uuid4().hex, lora_request=lora):
            final = out
        if final is None:  # pragma: no cover - the engine always yields the final output
            raise RuntimeError("vllm returned no output")
        return [completion_sample(o) for o in sorted(final.outputs, key=lambda o: o.index)]

    # --- weights ------------------------------------------------------------------------------

    async def prepare_weights(self, header: WeightsHeader, payload: bytes) -> PreparedWeights:
        if header.kind == "lora":
            update = await asyncio.to_thread(
                prepare_lora, header, payload, self._skeleton.config, self._dtype, max_rank=self._cfg.max_lora_rank
            )
            folder = await asyncio.to_thread(write_adapter_dir, update, self._work_dir / "adapters" / f"v{header.version}")
            request = self._lora_request(header.version, folder)
            try:
                await self._engine.add_lora(request)  # load it now, outside the gate
            except Exception as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise VersionMismatch(f"vllm refused the adapter ({exc})", reason="WEIGHTS_DO_NOT_FIT") from None
            return update
        update = await asyncio.to_thread(prepare_full, header, payload, self._skeleton, self._dtype)
        path = self._work_dir / f"full-v{header.version}.safetensors"
        await asyncio.to_thread(path.write_bytes, payload)
        return update

    def _lora_request(self, version: int, folder: Path) -> Any:
        from vllm.lora.request import LoRARequest

        # lora_int_id must be > 0; versions pushed are >= 1 (0 is the initial model).
        return LoRARequest(f"policy-v{version}", version, str(folder))

    async def commit_weights(self, prepared: PreparedWeights) -> None:
        old = self._lora
        if isinstance(prepared, LoraUpdate):
            self._lora = self._lora_request(prepared.version, self._work_dir / "adapters" / f"v{prepared.version}")
        elif isinstance(prepared, FullUpdate):
            path = self._work_dir / f"full-v{prepared.version}.safetensors"
            await self._engine.collective_rpc(LOAD_FULL_WEIGHTS, args=(str(path),))
            await self._engine.reset_prefix_cache()
            self._lora = None  # full weights replace the policy, adapter included
            path.unlink(missing_ok=True)
        if old is not None and old is not self._lora:
            try:
                await self._engine.remove_lora(old.lora_int_id)
            except Exception:  # an unused adapter left in the cache is harmless
                log.warning("vllm: could not unload adapter %s", old.lora_name, exc_info=True)
            shutil.rmtree(Path(old.lora_path), ignore_errors=True)


__all__ = [
    "LOAD_FULL_WEIGHTS",
    "VLLMBackend",
    "WORKER_EXTENSION",
    "check_environment",
    "completion_sample",
    "sampling_kwargs",
    "vllm_available",
]
