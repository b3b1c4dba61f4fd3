"""Defects the wire fuzz found, pinned as plain cases on a real orchestrator (each failed before
its fix): hostile YAML configs answered INTERNAL (or would expand without bound), a config_struct
holding NaN / Infinity answered INTERNAL, and a status echoing 4-byte characters was 4 KB although
cut to 1024 characters (the client saw RESOURCE_EXHAUSTED)."""
from __future__ import annotations

import time

import pytest

from services.common.wire import orchestrator_pb2

START = "/mor.v1.Orchestrator/StartRun"


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines)


@pytest.mark.parametrize("config_yaml", [
    pytest.param("[" * 100_000, id="deep-brackets"),  # PyYAML RecursionError -> INTERNAL
    pytest.param("{" * 5_000, id="deep-braces"),
    pytest.param("a: &a [*a]", id="recursive-alias"),  # json.dumps "Circular reference" -> INTERNAL
    pytest.param(_laughs(9), id="alias-bomb-9^9"),  # 387M values once expanded: no bound before
    pytest.param("x: " + "a" * 300_000, id="huge"),
])
def test_hostile_config_yaml_is_invalid_argument_quickly(orchestrator, config_yaml) -> None:
    req = orchestrator_pb2.StartRunRequest(run_id="r", config_yaml=config_yaml)
    t0 = time.perf_counter()
    out = orchestrator.call(orchestrator.caller.unary(START, req.SerializeToString()))
    assert out.code.name == "INVALID_ARGUMENT", (out.code, out.details[:200])
    assert time.perf_counter() - t0 < 5


def test_hostile_override_value_is_invalid_argument(orchestrator) -> None:
    req = orchestrator_pb2.StartRunRequest(run_id="r", config_yaml="seed: 0", overrides=["grpo.beta=" + "[" * 5000])
    out = orchestrator.call(orchestrator.caller.unary(START, req.SerializeToString()))
    assert out.code.name == "INVALID_ARGUMENT", (out.code, out.details[:200])


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_config_struct_with_non_finite_number_is_invalid_argument(orchestrator, number) -> None:
    req = orchestrator_pb2.StartRunRequest(run_id="r")
    req.config_struct.fields["seed"].number_value = number  # MessageToDict raised ValueError -> INTERNAL
    out = orchestrator.call(orchestrator.caller.unary(START, req.SerializeToString()))
    assert out.code.name == "INVALID_ARGUMENT", (out.code, out.details[:200])


def test_status_echoing_wide_characters_stays_under_2_kib(orchestrator) -> None:
    req = orchestrator_pb2.RemoveNodeRequest(node_id="😀" * 5000)
    out = orchestrator.call(orchestrator.caller.unary("/mor.v1.Orchestrator/RemoveNode", req.SerializeToString()))
    assert out.code.name == "NOT_FOUND"
    assert len(out.details.encode()) <= 1024 and "more characters cut" in out.details
