"""The update rules in isolation: header and version checks, payload receipt, adapter and full-weights
validation, and the readers-writer gate that makes swaps atomic."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from services.common.errors import ChecksumMismatch, InvalidInput, Overloaded, StalePolicy, VersionMismatch
from services.common.weights_codec import WeightsHeader, encode_lora_adapter, read_adapter_dir, sha256_hex
from services.policy_sampler.version_gate import VersionGate
from services.policy_sampler.weights import (
    check_header,
    check_version,
    expected_lora_shapes,
    parse_lora_config,
    prepare_full,
    prepare_lora,
    receive_payload,
)

SHA = "a" * 64


def _header(**kw) -> WeightsHeader:
    base = {"version": 1, "kind": "lora", "total_bytes": 10, "sha256": SHA, "adapter_config_json": "{}"}
    return WeightsHeader(**{**base, **kw})


@pytest.mark.parametrize(
    ("header", "error", "words"),
    [
        (_header(kind=None), InvalidInput, "kind"),
        (_header(format="pickle"), InvalidInput, "format"),
        (_header(version=-1), InvalidInput, "version"),
        (_header(total_bytes=0), InvalidInput, "total_bytes"),
        (_header(sha256="ABC"), InvalidInput, "sha256"),
        (_header(adapter_config_json=""), InvalidInput, "adapter_config_json"),
        (_header(kind="full"), InvalidInput, "adapter_config_json"),
        (_header(total_bytes=101), Overloaded, "limit is 100"),
    ],
)
def test_bad_headers_are_refused(header, error, words) -> None:
    with pytest.raises(error, match=words):
        check_header(header, max_bytes=100)


def test_a_good_header_passes() -> None:
    check_header(_header(format=""), max_bytes=100)  # an empty format means safetensors
    check_header(_header(kind="full", adapter_config_json=""), max_bytes=100)


def test_version_rules() -> None:
    assert check_version(_header(version=3), serving_version=2, serving_sha256="x") is True
    assert check_version(_header(version=2), serving_version=2, serving_sha256=SHA) is False  # retried upload
    with pytest.raises(StalePolicy):
        check_version(_header(version=1), serving_version=2, serving_sha256="x")
    with pytest.raises(VersionMismatch, match="already serving"):
        check_version(_header(version=2), serving_version=2, serving_sha256="other")


async def _chunks(*parts: bytes):
    for p in parts:
        yield p


@pytest.mark.parametrize(
    ("parts", "error", "words"),
    [
        ((b"hello", b"worl"), InvalidInput, "truncated"),
        ((b"hello", b"world!"), InvalidInput, "more than"),
        ((b"hello", b"wOrld"), ChecksumMismatch, "sha256"),
    ],
)
def test_payload_receipt_checks_size_and_checksum(parts, error, words) -> None:
    header = _header(total_bytes=10, sha256=sha256_hex(b"helloworld"))

    with pytest.raises(error, match=words):
        asyncio.run(receive_payload(header, _chunks(*parts)))


def test_payload_receipt_reassembles_chunks() -> None:
    header = _header(total_bytes=10, sha256=sha256_hex(b"helloworld"))

    assert asyncio.run(receive_payload(header, _chunks(b"hel", b"", b"lowor", b"ld"))) == b"helloworld"


@pytest.fixture(scope="module")
def adapter(tools):
    policy = tools.lora_policy(rank=2)
    payload, config = encode_lora_adapter(policy.model)
    return payload, config, tools.trainer_policy()


def test_adapter_shapes_come_from_the_architecture(adapter) -> None:
    payload, config, base = adapter

    shapes = expected_lora_shapes(base.model.config, config)

    hidden = base.model.config.text_config.hidden_size
    q_a = next(k for k in shapes if k.endswith("layers.0.self_attn.q_proj.lora_A.weight"))
    assert shapes[q_a] == (2, hidden)
    assert not any("visual" in k for k in shapes)  # the regex targets the language model only


def test_a_valid_adapter_is_prepared_in_the_served_dtype(adapter) -> None:
    payload, config, base = adapter
    header = _header(total_bytes=len(payload), sha256=sha256_hex(payload), adapter_config_json=config)

    update = prepare_lora(header, payload, base.model.config, torch.bfloat16)

    assert update.config.r == 2
    assert {t.dtype for t in update.tensors.values()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("edit", "error", "reason"),
    [
        (lambda c: "not json", InvalidInput, "BAD_ADAPTER_CONFIG"),
        (lambda c: "[1, 2]", InvalidInput, "BAD_ADAPTER_CONFIG"),
        (lambda c: json.dumps({**json.loads(c), "peft_type": "IA3"}), InvalidInput, "BAD_ADAPTER_CONFIG"),
        (lambda c: json.dumps({**json.loads(c), "r": 3}), VersionMismatch, "WEIGHTS_DO_NOT_FIT"),
        (lambda c: json.dumps({**json.loads(c), "target_modules": ["no_such_module"]}), VersionMismatch,
         "WEIGHTS_DO_NOT_FIT"),
    ],
)
def test_adapter_config_problems(adapter, edit, error, reason) -> None:
    payload, config, base = adapter
    header = _header(total_bytes=len(payload), sha256=sha256_hex(payload), adapter_config_json=edit(config))

    with pytest.raises(error) as err:
        prepare_lora(header, payload, base.model.config, torch.float32)

    assert err.value.reason == reason


def test_adapter_rank_above_the_limit_is_refused(adapter) -> None:
    payload, config, base = adapter
    header = _header(total_bytes=len(payload), sha256=sha256_hex(payload), adapter_config_json=config)

    with pytest.raises(VersionMismatch, match="max_lora_rank"):
        prepare_lora(header, payload, base.model.config, torch.float32, max_rank=1)


def test_config_key_ignores_provenance_fields(adapter) -> None:
    _, config, _ = adapter
    moved = json.dumps({**json.loads(config), "base_model_name_or_path": "/elsewhere", "inference_mode": False})

    assert parse_lora_config(config)[1] == parse_lora_config(moved)[1]


def test_full_weights_accept_either_name_of_a_tied_tensor(tools) -> None:
    from safetensors.torch import save

    model = tools.trainer_policy().model
    named = dict(model.named_parameters())  # tied: embed_tokens listed, lm_head not
    tied = "model.language_model.embed_tokens.weight"
    renamed = {("lm_head.weight" if k == tied else k): v.detach() for k, v in named.items()}
    payload = save(renamed)

    update = prepare_full(_header(kind="full", total_bytes=len(payload), adapter_config_json=""), payload, model,
                          torch.float32)

    assert set(update.tensors) == set(named)


def test_full_weights_missing_a_tensor_do_not_fit(tools) -> None:
    from safetensors.torch import save

    model = tools.trainer_policy().model
    named = {k: v.detach() for k, v in model.named_parameters()}
    named.pop(sorted(named)[0])
    payload = save(named)

    with pytest.raises(VersionMismatch, match="missing"):
        prepare_full(_header(kind="full", total_bytes=len(payload), adapter_config_json=""), payload, model,
                     torch.float32)


def test_adapter_folder_round_trip(tools, tmp_path) -> None:
    policy = tools.lora_policy(rank=2)
    policy.model.save_pretrained(tmp_path)

    payload, config = read_adapter_dir(tmp_path)

    assert parse_lora_config(config)[0].r == 2
    assert payload[:8]  # safetensors header length
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
        read_adapter_dir(tmp_path / "nothing")


def test_gate_writer_waits_for_readers_and_holds_new_ones() -> None:
    events: list[str] = []

    async def scenario() -> None:
        gate = VersionGate()
        first_in = asyncio.Event()

        async def reader(name: str, hold: float, started: asyncio.Event | None = None) -> None:
            async with gate.reading():
                events.append(f"{name}+")
                if started:
                    started.set()
                await asyncio.sleep(hold)
                events.append(f"{name}-")

        async def writer() -> None:
            async with gate.writing():
                events.append("W+")
                await asyncio.sleep(0.01)
                events.append("W-")

        r1 = asyncio.ensure_future(reader("r1", 0.05, first_in))
        await first_in.wait()
        w = asyncio.ensure_future(writer())
        await asyncio.sleep(0.005)
        r2 = asyncio.ensure_future(reader("r2", 0.0))  # arrives while the writer waits
        await asyncio.gather(r1, w, r2)

    asyncio.run(scenario())

    assert events == ["r1+", "r1-", "W+", "W-", "r2+", "r2-"]
