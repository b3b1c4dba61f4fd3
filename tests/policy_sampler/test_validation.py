"""Generate validation (pure, then over the wire), overload, auth and health of the sampler."""

from __future__ import annotations

import io
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from pydantic import SecretStr

from services.common import certs
from services.common.config import AuthSection
from services.common.config.services import SamplingDefaultsSection
from services.common.errors import InvalidInput
from services.common.grpc import error_reason
from services.policy_sampler.client import SamplerClient, SamplerPrompt
from services.policy_sampler.requests import (
    GenerateCall,
    RawImage,
    RawPrompt,
    RawSampling,
    SamplerLimits,
    resolve_sampling,
    validate_generate,
)


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def limits(tools) -> SamplerLimits:
    return SamplerLimits.from_settings(tools.settings())


def _call(prompts=None, group_size=2, **sampling) -> GenerateCall:
    prompts = prompts if prompts is not None else (RawPrompt("p", "Colour?"),)
    return GenerateCall(tuple(prompts), group_size, RawSampling(**sampling))


BAD_CALLS = {
    "no prompts": (_call(prompts=()), "prompts"),
    "too many prompts": (_call(prompts=[RawPrompt(str(i), "q") for i in range(5)]), "prompts"),
    "group of one": (_call(group_size=1), "group_size"),
    "group too large": (_call(group_size=5), "group_size"),
    "empty text": (_call(prompts=[RawPrompt("p", "   ")]), "prompts[0].text"),
    "text too long": (_call(prompts=[RawPrompt("p", "x" * 201)]), "prompts[0].text"),
    "duplicate ids": (_call(prompts=[RawPrompt("p", "a"), RawPrompt("p", "b")]), "prompt_id"),
    "not an image": (_call(prompts=[RawPrompt("p", "a", RawImage(b"not a png", "image/png"))]), "prompts[0].image"),
    "empty image": (_call(prompts=[RawPrompt("p", "a", RawImage(b"", "image/png"))]), "prompts[0].image"),
    "mime not allowed": (_call(prompts=[RawPrompt("p", "a", RawImage(_png(), "image/gif"))]), "mime_type"),
    "mime mismatch": (_call(prompts=[RawPrompt("p", "a", RawImage(_jpeg(), "image/png"))]), "mime_type"),
    "image too large": (_call(prompts=[RawPrompt("p", "a", RawImage(b"\x89PNG" + b"0" * 70_000, "image/png"))]),
                        "prompts[0].image"),
    "max_new_tokens over cap": (_call(max_new_tokens=9), "max_new_tokens"),
    "negative temperature": (_call(temperature=-0.5), "temperature"),
    "nan temperature": (_call(temperature=math.nan), "temperature"),
    "top_p above 1": (_call(top_p=1.5), "top_p"),
    "negative top_k": (_call(top_k=-1), "top_k"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_calls_are_refused_naming_the_field(limits, case) -> None:
    call, field = BAD_CALLS[case]

    with pytest.raises(InvalidInput) as err:
        validate_generate(call, limits, SamplingDefaultsSection(max_new_tokens=6))

    assert field in str(err.value)


def test_a_good_call_is_resolved(limits) -> None:
    call = _call(prompts=[RawPrompt("a", "q", RawImage(_png(), "image/png")), RawPrompt("b", "r")], group_size=4,
                 temperature=0.0, seed=2**64 + 5)

    job = validate_generate(call, limits, SamplingDefaultsSection(max_new_tokens=6))

    assert job.num_samples == 8
    assert job.prompts[0].image.size == (32, 32) and job.prompts[1].image is None
    assert job.sampling.greedy and job.sampling.max_new_tokens == 6
    assert job.sampling.seed == 5  # seeds wrap into [0, 2**63)


def test_unset_sampling_takes_the_defaults_and_a_fresh_seed() -> None:
    defaults = SamplingDefaultsSection(temperature=0.9, top_p=0.8, top_k=5, max_new_tokens=3)

    a = resolve_sampling(RawSampling(), defaults, max_new_tokens=8)
    b = resolve_sampling(RawSampling(), defaults, max_new_tokens=8)

    assert (a.temperature, a.top_p, a.top_k, a.max_new_tokens) == (0.9, 0.8, 5, 3)
    assert a.seed != b.seed


def test_bad_requests_get_invalid_argument_over_the_wire(serve, arun) -> None:
    async def scenario():
        async with serve() as running:
            gen = running.client.generate
            bad = {
                "empty prompts": gen([], 2),
                "group of one": gen([SamplerPrompt("p", "q")], 1),
                "group too large": gen([SamplerPrompt("p", "q")], 5),
                "too many prompts": gen([SamplerPrompt(str(i), "q") for i in range(5)], 2),
                "bad image": gen([SamplerPrompt("p", "q", b"garbage", "image/png")], 2),
                "max_new_tokens over cap": gen([SamplerPrompt("p", "q")], 2, max_new_tokens=100),
            }
            out = {}
            for name, coro in bad.items():
                try:
                    await coro
                    out[name] = (grpc.StatusCode.OK, None)
                except grpc.aio.AioRpcError as err:
                    out[name] = (err.code(), error_reason(err))
            return out

    outcomes = arun(scenario())

    assert {n: c for n, (c, _) in outcomes.items()} == dict.fromkeys(outcomes, grpc.StatusCode.INVALID_ARGUMENT)
    assert outcomes["group of one"][1] == "TOO_FEW"
    assert outcomes["bad image"][1] == "UNDECODABLE_IMAGE"


def test_overload_is_resource_exhausted(serve, arun) -> None:
    async def scenario():
        async with serve(max_queued_samples=6) as running:
            ok = await running.client.generate([SamplerPrompt("a", "q"), SamplerPrompt("b", "r")], 3)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await running.client.generate([SamplerPrompt(str(i), "q") for i in range(4)], 2)
            return len(ok.groups), err.value.code()

    assert arun(scenario()) == (2, grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    orch = certs.issue_token(d, "orchestrator", server="sampler")
    intruder = certs.issue_token(d, "intruder", server="sampler")
    return certs.tokens_path(d, "sampler"), orch, intruder


@pytest.mark.parametrize(
    ("who", "expected"),
    [("nobody", grpc.StatusCode.UNAUTHENTICATED), ("forged", grpc.StatusCode.UNAUTHENTICATED),
     ("intruder", grpc.StatusCode.PERMISSION_DENIED), ("orchestrator", grpc.StatusCode.OK)],
)
def test_token_auth_guards_generate_and_updates(serve, arun, tokens, who, expected) -> None:
    tokens_file, orch, intruder = tokens
    token = {"orchestrator": orch, "intruder": intruder, "forged": "not-a-token"}.get(who)
    client_auth = AuthSection(token=SecretStr(token)) if token else AuthSection()

    async def scenario():
        async with serve(auth={"tokens_file": tokens_file, "allowed_callers": ("orchestrator",)}) as running:
            codes = []
            async with SamplerClient(running.endpoint(auth=client_auth), retries=0) as client:
                for call in (client.generate([SamplerPrompt("p", "q")], 2), client.push_weights(1, b"x", "full"),
                             client.get_info()):
                    try:
                        await call
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
            return codes

    generate, push, info = arun(scenario())

    assert generate == info == expected
    # an authorised caller gets past auth to the update checks (a 1-byte payload is not safetensors)
    assert push == (grpc.StatusCode.INVALID_ARGUMENT if expected == grpc.StatusCode.OK else expected)


def test_health_is_serving_once_loaded_and_info_reports_it(serve, arun) -> None:
    async def scenario():
        async with serve() as running:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.app.port}") as ch:
                health = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="mor.v1.PolicySampler"), timeout=5)
            return health.status, await running.client.get_info()

    status, info = arun(scenario())

    assert status == health_pb2.HealthCheckResponse.SERVING
    assert (info.backend, info.serving_state, info.policy_version) == ("hf", "serving", 0)
    assert (info.model_name, info.model_arch) == ("qwen2_vl-tiny", "Qwen2VLForConditionalGeneration")
    assert (info.max_prompts, info.max_group_size, info.max_new_tokens) == (4, 4, 8)
