"""The Orchestrator API's authorisation on a real server over mutual TLS: an organisation may
register, update and remove only its own node; run control is for operators only (issue 18,
item 7). Before, `allowed_callers` was per service: a caller allowed to RegisterNode could also
remove another organisation's node and stop runs."""
from __future__ import annotations

import grpc
import pytest

from services.common import certs
from services.common.config import OrchestratorSettings, TLSSection
from services.common.errors import PermissionDenied
from services.common.grpc.credentials import channel_credentials
from services.common.wire import orchestrator_pb2 as pb
from services.common.wire import orchestrator_pb2_grpc
from services.orchestrator.access import check_node_owner
from services.orchestrator.app import OrchestratorApp

WHO = ("operator", "clinic", "bank")
UNREACHABLE = "127.0.0.1:9"  # registering probes the node; a refused connection is only a health result


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("orch-pki")
    certs.init_ca(d)
    certs.issue(d, "orchestrator", client=True)
    tokens = {}
    for who in WHO:
        certs.issue(d, who, client=True)
        tokens[who] = certs.issue_token(d, who, server="orchestrator")
    return d, tokens


def _settings(tmp_path, d) -> OrchestratorSettings:
    return OrchestratorSettings(
        runs_dir=tmp_path / "runs", server={"host": "127.0.0.1", "port": 0, "grace_s": 1.0},
        tls={"ca_cert": d / "ca.pem", "cert": d / "orchestrator.pem", "key": d / "orchestrator.key",
             "require_client_auth": True},
        auth={"tokens_file": certs.tokens_path(d, "orchestrator")},  # the typed defaults do the rest
        metrics={"enabled": False}, node_tls={"insecure": True})


async def _code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _stream_code(call) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_organisations_change_only_their_own_node_and_operators_control_runs(tmp_path, pki, arun) -> None:
    d, tokens = pki

    def channel(port: int, who: str) -> grpc.aio.Channel:
        tls = TLSSection(ca_cert=d / "ca.pem", cert=d / f"{who}.pem", key=d / f"{who}.key")
        creds = grpc.composite_channel_credentials(channel_credentials(tls),
                                                   grpc.access_token_call_credentials(tokens[who]))
        return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)

    async def scenario() -> dict[str, grpc.StatusCode]:
        app = OrchestratorApp(_settings(tmp_path, d))
        await app.start()
        out = {}
        try:
            async with channel(app.port, "clinic") as c, channel(app.port, "bank") as b, \
                    channel(app.port, "operator") as o:
                clinic, bank, op = (orchestrator_pb2_grpc.OrchestratorStub(ch) for ch in (c, b, o))
                out["clinic registers clinic"] = await _code(clinic.RegisterNode(
                    pb.RegisterNodeRequest(node_id="clinic", endpoint=UNREACHABLE), timeout=10))
                out["bank registers bank"] = await _code(bank.RegisterNode(
                    pb.RegisterNodeRequest(node_id="bank", endpoint=UNREACHABLE), timeout=10))
                out["clinic updates bank"] = await _code(clinic.RegisterNode(
                    pb.RegisterNodeRequest(node_id="bank", endpoint="evil:1"), timeout=10))
                out["bank endpoint"] = app.manager.nodes["bank"].endpoint
                out["clinic removes bank"] = await _code(clinic.RemoveNode(pb.RemoveNodeRequest(node_id="bank"), timeout=10))
                out["clinic stops a run"] = await _code(clinic.StopRun(pb.StopRunRequest(run_id="r1"), timeout=10))
                out["clinic starts a run"] = await _code(clinic.StartRun(pb.StartRunRequest(config_yaml="{}"), timeout=10))
                out["clinic lists nodes"] = await _code(clinic.ListNodes(pb.ListNodesRequest(), timeout=10))
                out["clinic gets a run"] = await _code(clinic.GetRun(pb.GetRunRequest(run_id="r1"), timeout=10))
                out["clinic watches a run"] = await _stream_code(clinic.WatchRun(pb.WatchRunRequest(run_id="r1"), timeout=10))
                out["operator gets a run"] = await _code(op.GetRun(pb.GetRunRequest(run_id="r1"), timeout=10))
                out["operator watches a run"] = await _stream_code(op.WatchRun(pb.WatchRunRequest(run_id="r1"), timeout=10))
                out["clinic removes clinic"] = await _code(clinic.RemoveNode(pb.RemoveNodeRequest(node_id="clinic"), timeout=10))
                out["operator stops a run"] = await _code(op.StopRun(pb.StopRunRequest(run_id="r1"), timeout=10))
                out["operator removes bank"] = await _code(op.RemoveNode(pb.RemoveNodeRequest(node_id="bank"), timeout=10))
                out["bank left"] = "bank" in app.manager.nodes
        finally:
            await app.stop(0)
        return out

    out = arun(scenario())

    ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
    assert out == {
        "clinic registers clinic": ok, "bank registers bank": ok,
        "clinic updates bank": denied, "bank endpoint": UNREACHABLE, "clinic removes bank": denied,
        "clinic stops a run": denied, "clinic starts a run": denied, "clinic lists nodes": denied,
        "clinic gets a run": denied, "clinic watches a run": denied,
        "operator gets a run": grpc.StatusCode.NOT_FOUND, "operator watches a run": grpc.StatusCode.NOT_FOUND,
        "clinic removes clinic": ok,
        "operator stops a run": grpc.StatusCode.NOT_FOUND,  # past auth: there is no run r1
        "operator removes bank": ok, "bank left": False,
    }


def test_the_ownership_message_is_bounded_and_names_the_rule() -> None:
    with pytest.raises(PermissionDenied) as err:
        check_node_owner("clinic", "b" * 100_000, frozenset({"operator"}), "remove")

    assert len(str(err.value)) < 300 and "only its own node" in str(err.value)
    check_node_owner("operator", "bank", frozenset({"operator"}), "remove")  # operators: any node
    check_node_owner(None, "bank", frozenset({"operator"}), "remove")        # auth off: no rule

