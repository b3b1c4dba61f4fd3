"""GrpcService life cycle: health, graceful drain, reflection, overload, binding, start-up checks."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.config import AuthSection, ConfigError, EndpointSection, ServerSection, TLSSection
from services.common.grpc import GrpcService, create_channel, serving
from services.common.wire import reward_node_pb2, reward_node_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


def test_health_not_serving_until_ready_then_serving(serve, arun) -> None:
    async def scenario() -> tuple[list[int], list[int], bool, bool]:
        async with serve(ready=False) as running:
            async with running.channel() as ch:
                before = [await _status(ch, s) for s in ("", "mor.v1.RewardNode")]
                ready_before = running.service.is_ready()
                await running.service.set_ready()
                after = [await _status(ch, s) for s in ("", "mor.v1.RewardNode")]
                return before, after, ready_before, running.service.is_ready()

    before, after, ready_before, ready_after = arun(scenario())

    assert before == [NOT_SERVING, NOT_SERVING]
    assert after == [SERVING, SERVING]
    assert (ready_before, ready_after) == (False, True)


def test_health_turns_not_serving_when_draining(serve, arun) -> None:
    async def scenario() -> list[int]:
        async with serve() as running:
            async with running.channel() as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                watch = stub.Watch(health_pb2.HealthCheckRequest(service="mor.v1.RewardNode"))
                seen = [(await watch.read()).status]
                stopping = asyncio.ensure_future(running.service.stop(grace=0.3))
                seen.append((await watch.read()).status)
                await stopping
                await running.service.set_ready()  # ignored: a draining server never turns ready again
                seen.append(int(running.service.is_ready()))
                return seen

    assert arun(scenario()) == [SERVING, NOT_SERVING, 0]


def test_graceful_stop_finishes_in_flight_and_refuses_new_calls(serve, score, arun) -> None:
    async def scenario() -> tuple[int, grpc.StatusCode, float]:
        async with serve() as running:
            running.node.slow_s = 0.8
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                slow = asyncio.ensure_future(stub.Score(score("slow", 3), timeout=10))
                await running.node.started.wait()
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                stopping = asyncio.ensure_future(running.service.stop(grace=5.0))
                await asyncio.sleep(0.1)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Score(score("ok"), timeout=5)
                reply = await slow
                await stopping
                return len(reply.scores), refused.value.code(), loop.time() - t0

    n_scores, refused_code, stop_took = arun(scenario())

    assert n_scores == 3
    assert refused_code == grpc.StatusCode.UNAVAILABLE
    assert stop_took < 3.0  # returned once the in-flight call finished, not after the whole grace


def test_a_second_stop_with_a_shorter_grace_cuts_the_drain(serve, score, arun) -> None:
    async def scenario() -> tuple[grpc.StatusCode, float]:
        async with serve() as running:
            running.node.slow_s = 10.0
            async with running.channel() as ch:
                slow = asyncio.ensure_future(
                    reward_node_pb2_grpc.RewardNodeStub(ch).Score(score("slow"), timeout=15)
                )
                await running.node.started.wait()
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                draining = asyncio.ensure_future(running.service.stop(grace=10.0))
                await asyncio.sleep(0.1)
                await running.service.stop(grace=0)  # what a second SIGTERM does
                await draining
                took = loop.time() - t0
                try:
                    await slow
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                return code, took

    code, took = arun(scenario())

    assert code != grpc.StatusCode.OK
    assert took < 3.0


def test_reflection_lists_the_services(serve, arun) -> None:
    async def scenario() -> set[str]:
        async with serve() as running:
            async with running.channel() as ch:
                stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                call = stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
                names: set[str] = set()
                async for reply in call:
                    names |= {s.name for s in reply.list_services_response.service}
                return names

    names = arun(scenario())

    assert {"mor.v1.RewardNode", "mor.v1.PolicySampler", "grpc.health.v1.Health"} <= names


def test_over_max_concurrent_rpcs_is_resource_exhausted(serve, score, arun) -> None:
    async def scenario() -> grpc.StatusCode:
        cfg = ServerSection(host="127.0.0.1", port=0, max_concurrent_rpcs=1, grace_s=0)
        async with serve(server=cfg) as running:
            running.node.slow_s = 0.5
            async with running.channel() as ch:
                stub = reward_node_pb2_grpc.RewardNodeStub(ch)
                slow = asyncio.ensure_future(stub.Score(score("slow"), timeout=5))
                await running.node.started.wait()
                try:
                    await stub.Score(score("ok"), timeout=5)
                except grpc.aio.AioRpcError as err:
                    return err.code()
                finally:
                    await slow
                return grpc.StatusCode.OK

    assert arun(scenario()) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_port_zero_binds_distinct_free_ports(serve, arun) -> None:
    async def scenario() -> tuple[int, int]:
        async with serve() as a, serve() as b:
            return a.service.port, b.service.port

    port_a, port_b = arun(scenario())

    assert port_a > 0 and port_b > 0 and port_a != port_b


def test_busy_port_is_a_config_error_naming_the_field(serve, arun) -> None:
    async def scenario() -> str:
        async with serve() as running:
            clash = GrpcService("clash", server=ServerSection(port=running.service.port), tls=TLSSection(insecure=True))
            clash.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server,
                               reward_node_pb2_grpc.RewardNodeServicer(), "mor.v1.RewardNode")
            with pytest.raises(ConfigError) as err:
                await clash.start()
            return str(err.value)

    assert arun(scenario()).startswith("server.port")


@pytest.mark.parametrize(
    ("tls", "field"),
    [
        ({}, "tls.cert"),  # TLS is the default: a server without a certificate cannot start
        ({"cert": "missing.pem", "key": "missing.key"}, "tls.cert"),
    ],
)
def test_tls_files_are_checked_at_start_with_the_field_named(tmp_path, arun, tls, field) -> None:
    tls_section = TLSSection(**{k: tmp_path / v for k, v in tls.items()})
    service = GrpcService("t", server=ServerSection(), tls=tls_section)
    service.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server,
                         reward_node_pb2_grpc.RewardNodeServicer(), "mor.v1.RewardNode")

    with pytest.raises(ConfigError) as err:
        arun(service.start())

    assert str(err.value).startswith(field)


def test_garbage_key_file_is_named(tmp_path, pki, arun) -> None:
    (tmp_path / "bad.key").write_text("not a key")
    tls_section = TLSSection(cert=pki.server.cert, key=tmp_path / "bad.key")
    service = GrpcService("t", server=ServerSection(), tls=tls_section)
    service.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server,
                         reward_node_pb2_grpc.RewardNodeServicer(), "mor.v1.RewardNode")

    with pytest.raises(ConfigError) as err:
        arun(service.start())

    assert str(err.value).startswith("tls.key")


@pytest.mark.parametrize(
    ("auth", "field"),
    [
        ({"tokens_file": "nope.yaml"}, "auth.tokens_file"),
        ({"allowed_callers": ("orchestrator",)}, "auth.allowed_callers"),
    ],
)
def test_auth_config_is_checked_at_start(tmp_path, arun, auth, field) -> None:
    if "tokens_file" in auth:
        auth = {**auth, "tokens_file": tmp_path / auth["tokens_file"]}
    service = GrpcService("t", server=ServerSection(), tls=TLSSection(insecure=True), auth=AuthSection(**auth))
    service.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server,
                         reward_node_pb2_grpc.RewardNodeServicer(), "mor.v1.RewardNode")

    with pytest.raises(ConfigError) as err:
        arun(service.start())

    assert str(err.value).startswith(field)


def test_sigterm_drains_and_stops(arun) -> None:
    async def scenario() -> tuple[bool, bool]:
        service = GrpcService("t", server=ServerSection(grace_s=1.0), tls=TLSSection(insecure=True))
        service.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server,
                             reward_node_pb2_grpc.RewardNodeServicer(), "mor.v1.RewardNode")
        await service.start()
        await service.set_ready()
        service.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(service.wait_for_termination(), 5)

        async with create_channel(EndpointSection(address=service.address, tls=TLSSection(insecure=True))) as ch:
            try:
                await reward_node_pb2_grpc.RewardNodeStub(ch).GetInfo(
                    reward_node_pb2.RewardNodeGetInfoRequest(), timeout=1
                )
                refused = False
            except grpc.aio.AioRpcError as err:
                refused = err.code() == grpc.StatusCode.UNAVAILABLE
        return service.is_ready(), refused

    ready, refused = arun(scenario())

    assert ready is False
    assert refused is True
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_serving_stops_the_started_servers_when_a_later_one_fails_to_start(arun) -> None:
    def service(tls: TLSSection) -> GrpcService:
        s = GrpcService("t", server=ServerSection(host="127.0.0.1", port=0), tls=tls)
        s.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server,
                       reward_node_pb2_grpc.RewardNodeServicer(), "mor.v1.RewardNode")
        return s

    async def health_ok(port: int) -> bool:
        ep = EndpointSection(address=f"127.0.0.1:{port}", tls=TLSSection(insecure=True))
        async with create_channel(ep) as ch:
            try:
                return await _status(ch, "") == SERVING
            except grpc.aio.AioRpcError:
                return False

    async def scenario() -> tuple[list[bool], str, list[bool]]:
        good = [service(TLSSection(insecure=True)) for _ in range(2)]
        async with serving(good):
            for s in good:
                await s.set_ready()
            up = [await health_ok(s.port) for s in good]
        broken = [service(TLSSection(insecure=True)), service(TLSSection())]  # TLS without a certificate: start() fails
        with pytest.raises(ConfigError) as err:
            async with serving(broken):
                pass
        return up, str(err.value), [await health_ok(s.port) for s in [*good, broken[0]]]

    up, error, after = arun(scenario())

    assert up == [True, True]
    assert error.startswith("tls.cert")
    assert after == [False, False, False]  # every server serving() started is down again
