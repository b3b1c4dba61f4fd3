"""The Orchestrator gRPC servicer: a thin protobuf adapter over `RunManager`.

Converts messages to plain values and back; rules live in run_control.py and domain errors become status
codes in the shared exception interceptor.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidInput
from services.common.grpc.auth import current_caller
from services.common.wire import orchestrator_pb2, orchestrator_pb2_grpc, reward_node_pb2
from services.orchestrator.access import check_node_owner
from services.orchestrator.records import StepRecord
from services.orchestrator.run_control import (
    NodeRecord,
    RunEvent,
    RunHandle,
    RunManager,
    RunState,
    StateChange,
    load_untrusted_yaml,
    plain_config,
)

_STATES = {s: getattr(orchestrator_pb2, f"RUN_STATE_{s.name}") for s in RunState}


def _ts(t: float | None) -> Timestamp | None:
    if t is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def step_metrics(r: StepRecord) -> Any:
    p = r.phases
    return orchestrator_pb2.StepMetrics(
        step=r.step, policy_version=r.policy_version, reward_mean=r.reward_mean, reward_std=r.reward_std,
        fused_reward_mean=r.fused_reward_mean, rule_reward_mean=r.rule_reward_mean, kl=r.kl, loss=r.loss,
        clip_fraction_low=r.clip_low, clip_fraction_high=r.clip_high,
        zero_std_group_fraction=r.zero_std_group_fraction, reward_std_in_group=r.reward_std_in_group,
        nodes=[orchestrator_pb2.NodeStepMetrics(
            node_id=n.node_id, responded=n.responded, error_code=n.error_code, score_mean=n.score_mean,
            score_std=n.score_std, weight_mean=n.weight_mean, latency_seconds=n.latency_s) for n in r.nodes],
        phase_times=orchestrator_pb2.PhaseTimes(
            generate_seconds=p.get("generate", 0.0), score_seconds=p.get("score", 0.0),
            fuse_seconds=p.get("fuse", 0.0), train_seconds=p.get("train", 0.0),
            push_weights_seconds=p.get("push", 0.0), total_seconds=p.get("total", 0.0)),
    )


def run_message(h: RunHandle) -> Any:
    return orchestrator_pb2.Run(
        run_id=h.run_id, state=_STATES[h.state], create_time=_ts(h.create_time), update_time=_ts(h.update_time),
        step=h.step, total_steps=h.config.grpo.steps, policy_version=h.policy_version, config_yaml=h.config_yaml,
        latest_metrics=step_metrics(h.latest) if h.latest else None, error_message=h.error,
    )


def event_message(ev: RunEvent) -> Any:
    msg = orchestrator_pb2.RunEvent(sequence=ev.sequence, time=_ts(ev.time), run_id=ev.run_id)
    if isinstance(ev.kind, StepRecord):
        msg.step.CopyFrom(step_metrics(ev.kind))
    else:
        k: StateChange = ev.kind
        msg.state_change.CopyFrom(orchestrator_pb2.RunStateChange(
            previous_state=_STATES[k.previous] if k.previous else orchestrator_pb2.RUN_STATE_UNSPECIFIED,
            state=_STATES[k.state], reason=k.reason))
    return msg


def node_message(n: NodeRecord) -> Any:
    msg = orchestrator_pb2.Node(node_id=n.node_id, endpoint=n.endpoint, healthy=n.healthy,
                                last_check_time=_ts(n.last_check), last_error=n.last_error)
    if n.info is not None:
        msg.info.CopyFrom(reward_node_pb2.NodeInfo(node_id=n.info.node_id, rm_kind=n.info.rm_kind,
                                                   objectives=n.info.objectives, score_mean=n.info.score_mean,
                                                   score_std=n.info.score_std, model_version=n.info.model_version))
    return msg


def config_dict(request: Any) -> dict[str, Any]:
    which = request.WhichOneof("config")
    if which == "config_struct":
        try:
            data = json_format.MessageToDict(request.config_struct)
        except ValueError as exc:  # NaN / Infinity number values have no JSON form
            raise InvalidInput(f"config_struct: {exc}") from None
        return plain_config(data, "config_struct")
    data = load_untrusted_yaml(request.config_yaml or "", "config_yaml") or {}
    if not isinstance(data, dict):
        raise InvalidInput(f"config_yaml: top level must be a mapping, got {type(data).__name__}")
    return data


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, manager: RunManager, operators: Collection[str] | None = None) -> None:
        """`operators`: identities that may change any node (None: every authenticated caller);
        others may register and remove only their own node (services.orchestrator.access)."""
        self.manager = manager
        self.operators = operators

    async def StartRun(self, request: Any, context: Any) -> Any:
        handle = await self.manager.start(request.run_id, config_dict(request), list(request.overrides))
        return orchestrator_pb2.StartRunResponse(run=run_message(handle))

    async def GetRun(self, request: Any, context: Any) -> Any:
        return orchestrator_pb2.GetRunResponse(run=run_message(self.manager.get(request.run_id)))

    async def WatchRun(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for ev in self.manager.watch(request.run_id, request.from_step):
            yield orchestrator_pb2.WatchRunResponse(event=event_message(ev))

    async def StopRun(self, request: Any, context: Any) -> Any:
        return orchestrator_pb2.StopRunResponse(run=run_message(await self.manager.stop(request.run_id)))

    async def RegisterNode(self, request: Any, context: Any) -> Any:
        check_node_owner(current_caller(), request.node_id, self.operators, "register or update")
        node = await self.manager.register(request.node_id, request.endpoint)
        return orchestrator_pb2.RegisterNodeResponse(node=node_message(node))

    async def ListNodes(self, request: Any, context: Any) -> Any:
        return orchestrator_pb2.ListNodesResponse(nodes=[node_message(n) for n in await self.manager.list_nodes()])

    async def RemoveNode(self, request: Any, context: Any) -> Any:
        check_node_owner(current_caller(), request.node_id, self.operators, "remove")
        return orchestrator_pb2.RemoveNodeResponse(node=node_message(self.manager.remove(request.node_id)))


__all__ = ["OrchestratorServicer", "event_message", "run_message", "step_metrics"]
