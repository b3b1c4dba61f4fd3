"""Fuzz of a real policy sampler (tiny Qwen2-VL, small limits): Generate, UpdateWeights (whole
generated streams, near-valid LoRA pushes with edited headers, configs and payloads, raw chunks),
GetInfo and raw request bytes. Every answer must be OK or a documented status with a bounded
message; OK Generate answers must hold group_size completions per prompt with finite log-probs;
the RSS of the sampler's process (`mor sampler serve`) must stay bounded."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import strategies as st

from services.common.wire import common_pb2, policy_sampler_pb2

QUESTIONS = ("How many shapes are there?", "What colour is the circle?", "Describe the image.", "x")
LORA_TARGETS = r".*language_model.*\.(q_proj|v_proj|o_proj|gate_proj|down_proj)"
LORA_KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "lora_dropout", "bias", "use_rslora",
             "use_dora", "modules_to_save", "fan_in_fan_out", "init_lora_weights", "layers_to_transform",
             "layers_pattern", "exclude_modules", "task_type", "peft_type")
RSS_PEAK_BUDGET_MB = 768
UPDATE = "/mor.v1.PolicySampler/UpdateWeights"
GENERATE = "/mor.v1.PolicySampler/Generate"


@pytest.fixture(scope="module")
def adapter() -> tuple[bytes, str]:
    """A rank-2 LoRA adapter of the served policy with random B matrices: (safetensors, config json)."""
    from peft import LoraConfig, get_peft_model

    from services.common.models import ModelConfig, build_vlm
    from services.common.weights_codec import encode_lora_adapter

    base = build_vlm(ModelConfig(arch="qwen2_vl", preset="tiny", seed=0))
    model = get_peft_model(base.model, LoraConfig(r=2, lora_alpha=4, target_modules=LORA_TARGETS))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return encode_lora_adapter(model)


def valid_image(wf):
    named = wf.images()
    return st.sampled_from(wf.VALID_IMAGES).map(
        lambda n: common_pb2.Image(data=named[n], mime_type="image/jpeg" if n.startswith("jpeg") else "image/png"))


def valid_generate(wf):
    prompt = st.builds(lambda t, img: policy_sampler_pb2.Prompt(text=t, image=img), st.sampled_from(QUESTIONS),
                       st.none() | valid_image(wf))

    def request(prompts, g, temp, top_p, top_k, n, seed):
        for i, p in enumerate(prompts):
            p.prompt_id = f"p{i}"
        sampling = common_pb2.SamplingParams(temperature=temp, top_p=top_p, top_k=top_k, max_new_tokens=n, seed=seed)
        return policy_sampler_pb2.GenerateRequest(prompts=prompts, group_size=g, sampling=sampling)

    return st.builds(request, st.lists(prompt, min_size=1, max_size=3), st.integers(2, 3),
                     st.none() | st.floats(0.125, 1.5, width=32), st.sampled_from((0.0, 0.5, 0.9, 1.0)),
                     st.integers(0, 20), st.integers(0, 6), st.none() | st.integers(0, 2**63 - 1))


def fuzzer(wf):
    image = wf.image_message_values().map(lambda d: common_pb2.Image(**d))
    return wf.Fuzzer({
        "mor.v1.Image": lambda g: st.one_of(g, image),
        "mor.v1.Prompt.text": lambda g: st.one_of(st.sampled_from(QUESTIONS), g),
        "mor.v1.Prompt.prompt_id": lambda g: st.one_of(st.sampled_from(("a", "b", "a ")), g),
        "mor.v1.GenerateRequest.group_size": lambda g: st.one_of(st.integers(2, 5), g),
    })


def _check_generate(req, data: bytes) -> str | None:
    resp = policy_sampler_pb2.GenerateResponse.FromString(data)
    if [g.prompt_id for g in resp.groups] != [p.prompt_id for p in req.prompts]:
        return "OK with groups that do not match the prompts"
    for g in resp.groups:
        if len(g.completions) != req.group_size:
            return f"OK with {len(g.completions)} completions for group_size {req.group_size}"
        for c in g.completions:
            if len(c.token_ids) != len(c.logprobs) or not all(math.isfinite(x) and x <= 1e-4 for x in c.logprobs):
                return "OK with token ids and log-probs that do not pair up or are not finite log-probs"
    return None


def _assert_clean(tally, wf) -> None:
    summary = tally.summary()
    print(wf.dumps(summary))
    assert summary["server_alive"], "the server process ended during the test:\n" + tally.server_log_tail()
    assert not tally.bad, tally.report()
    # The server process's RSS (its peak over the test, sampled and, on Linux, the kernel's VmHWM).
    assert tally.rss_peak_mb - tally.rss_start_mb < RSS_PEAK_BUDGET_MB, summary


def test_generate(sampler, wf, fz, tally, profile) -> None:
    f = fuzzer(wf)
    desc = policy_sampler_pb2.GenerateRequest.DESCRIPTOR
    strategy = st.one_of(f.near(desc, valid_generate(wf)), f.message(desc))

    def body(req) -> None:
        out = sampler.call(sampler.caller.unary(GENERATE, req.SerializeToString()))
        tally.record(GENERATE, out, wf.DOCUMENTED[GENERATE], req, lambda b: _check_generate(req, b))

    fz.run_cases(fz.cases(profile, 50, 0.5), strategy, body, profile=profile)
    _assert_clean(tally, wf)
    assert tally.codes[GENERATE]["OK"] > 0, "no case reached the model"


def _json_values():
    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
    return st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                        max_leaves=8)


def _update_streams(wf, adapter):
    """Lists of serialized UpdateWeightsRequest chunks."""
    from services.common.weights_codec import sha256_hex

    payload, config = adapter
    f = fuzzer(wf)
    chunk = f.message(policy_sampler_pb2.UpdateWeightsRequest.DESCRIPTOR)
    generic = st.lists(chunk, max_size=4).map(lambda ms: [m.SerializeToString() for m in ms])
    raw = st.lists(wf.raw_payloads(chunk), min_size=1, max_size=3)

    configs = st.one_of(
        st.just(config),
        st.tuples(st.sampled_from(LORA_KEYS) | st.text(max_size=10), _json_values()).map(
            lambda kv: json.dumps({**json.loads(config), kv[0]: kv[1]})),
        wf.texts(),
    )
    payloads = st.one_of(st.just(payload), st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(0, 255)),
                                                    min_size=1, max_size=3).map(lambda e: wf_flip(payload, e)),
                         st.integers(0, len(payload)).map(lambda n: payload[:n]), st.binary(max_size=64))

    def stream(version, kind, cfg, data, size_ok, sha_ok, fmt, chunk_bytes, extra):
        header = policy_sampler_pb2.WeightsHeader(
            version=version, kind=kind, total_bytes=len(data) if size_ok else len(data) + 1,
            sha256=sha256_hex(data) if sha_ok else "0" * 64, format=fmt, adapter_config_json=cfg)
        msgs = [policy_sampler_pb2.UpdateWeightsRequest(header=header).SerializeToString()]
        msgs += [policy_sampler_pb2.UpdateWeightsRequest(data=data[i:i + chunk_bytes]).SerializeToString()
                 for i in range(0, len(data), chunk_bytes)]
        return msgs + [m.SerializeToString() for m in extra]

    near = st.builds(stream, st.integers(1, 50) | wf.ints(-(2**63), 2**63 - 1),
                     st.sampled_from((1, 1, 1, 0, 2, 7)), configs, payloads, st.sampled_from((True, True, True, False)),
                     st.sampled_from((True, True, True, False)), st.sampled_from(("safetensors", "safetensors", "", "pickle", "pt")),
                     st.sampled_from((1, 4096, 65536, 2**20)), st.lists(chunk, max_size=1))
    return st.one_of(near, generic, raw)


def wf_flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for i, v in edits:
        b[i] = v
    return bytes(b)


def test_update_weights(sampler, adapter, wf, fz, tally, profile) -> None:
    strategy = _update_streams(wf, adapter)

    def body(msgs) -> None:
        out = sampler.call(sampler.caller.stream_unary(UPDATE, msgs))
        tally.record(UPDATE, out, wf.DOCUMENTED[UPDATE], [m[:80] for m in msgs])

    fz.run_cases(fz.cases(profile, 30, 0.25), strategy, body, profile=profile)
    # The sampler still generates after the pushes (applied or refused).
    req = policy_sampler_pb2.GenerateRequest(prompts=[policy_sampler_pb2.Prompt(prompt_id="p", text="hi")], group_size=2)
    after = sampler.call(sampler.caller.unary(GENERATE, req.SerializeToString()))
    _assert_clean(tally, wf)
    assert after.code.name == "OK", after


def test_get_info_and_raw_bytes(sampler, wf, fz, tally, profile) -> None:
    f = fuzzer(wf)
    methods = {
        GENERATE: policy_sampler_pb2.GenerateRequest,
        "/mor.v1.PolicySampler/GetInfo": policy_sampler_pb2.PolicySamplerGetInfoRequest,
    }
    strategy = st.sampled_from(sorted(methods)).flatmap(
        lambda m: st.tuples(st.just(m), wf.raw_payloads(f.message(methods[m].DESCRIPTOR))))

    def body(case) -> None:
        method, payload = case
        out = sampler.call(sampler.caller.unary(method, payload))
        tally.record(f"raw {method}", out, wf.DOCUMENTED[method] | wf.RAW_EXTRA, case)

    fz.run_cases(fz.cases(profile, 30, 0.25), strategy, body, profile=profile)
    _assert_clean(tally, wf)
