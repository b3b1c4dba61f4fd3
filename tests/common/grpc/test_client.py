"""Client helpers: retries for idempotent calls, tokens from config, back-off."""

from __future__ import annotations

import grpc
import pytest
from pydantic import SecretStr

from services.common.config import AuthSection, ConfigError
from services.common.grpc import call_with_retry, read_token
from services.common.grpc.client import backoff_delay
from services.common.wire import reward_node_pb2_grpc


def _no_sleep():
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep, waits


def test_unavailable_is_retried_until_success(serve, score, arun) -> None:
    sleep, waits = _no_sleep()

    async def scenario() -> tuple[int, int]:
        async with serve() as running:
            running.node.flaky_failures = 2
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                reply = await call_with_retry(stub.Score, score("flaky", 4), timeout=3, retries=3, sleep=sleep)
                return len(reply.scores), running.node.calls["flaky"]

    n_scores, calls = arun(scenario())

    assert (n_scores, calls) == (4, 3)
    assert len(waits) == 2 and waits[1] > waits[0] * 1.2  # exponential back-off between attempts


def test_invalid_argument_is_not_retried(serve, score, arun) -> None:
    sleep, waits = _no_sleep()

    async def scenario() -> tuple[grpc.StatusCode, int]:
        async with serve() as running:
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call_with_retry(stub.Score, score("invalid"), timeout=3, retries=3, sleep=sleep)
                return err.value.code(), running.node.calls["invalid"]

    assert arun(scenario()) == (grpc.StatusCode.INVALID_ARGUMENT, 1)
    assert waits == []


def test_last_failure_is_raised_when_retries_run_out(serve, score, arun) -> None:
    sleep, waits = _no_sleep()

    async def scenario() -> tuple[grpc.StatusCode, int]:
        async with serve() as running:
            running.node.flaky_failures = 10
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call_with_retry(stub.Score, score("flaky"), timeout=3, retries=2, sleep=sleep)
                return err.value.code(), running.node.calls["flaky"]

    assert arun(scenario()) == (grpc.StatusCode.UNAVAILABLE, 3)
    assert len(waits) == 2


def test_every_call_needs_a_deadline(arun) -> None:
    async def never(*_args, **_kwargs):
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="deadline"):
        arun(call_with_retry(never, None, timeout=0))


@pytest.mark.parametrize(("rng", "expected"), [(0.5, 0.4), (0.0, 0.32), (1.0, 0.48)])
def test_backoff_is_exponential_capped_and_jittered(rng, expected) -> None:
    assert backoff_delay(2, 0.1, 5.0, 0.2, lambda: rng) == pytest.approx(expected)
    assert backoff_delay(20, 0.1, 5.0, 0.0, lambda: rng) == 5.0


def test_read_token_from_value_or_file(tmp_path) -> None:
    (tmp_path / "t.token").write_text("abc123\n")

    assert read_token(AuthSection()) is None
    assert read_token(AuthSection(token=SecretStr(" xyz "))) == "xyz"
    assert read_token(AuthSection(token_file=tmp_path / "t.token")) == "abc123"


def test_read_token_errors_name_the_field(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.token_file: file not found"):
        read_token(AuthSection(token_file=tmp_path / "missing.token"))
