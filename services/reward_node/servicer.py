"""mor.v1.RewardNode over gRPC: a thin adapter between protobuf and RewardNodeCore.

The only module of the node that imports the generated ``*_pb2`` stubs on the server side. Errors
are domain exceptions raised by the core; the shared exception interceptor maps them to status
codes (InvalidInput -> INVALID_ARGUMENT, Overloaded -> RESOURCE_EXHAUSTED, NotReady -> UNAVAILABLE).
"""
from __future__ import annotations

from typing import Any

from services.common.grpc import current_request_id
from services.common.wire import common_pb2, reward_node_pb2, reward_node_pb2_grpc
from services.reward_node.node import NodeDescription, RewardNodeCore, ScoredAnswer
from services.reward_node.validation import GroupInput

SERVING_STATES = {
    "not_loaded": common_pb2.SERVING_STATE_LOADING,
    "loading": common_pb2.SERVING_STATE_LOADING,
    "serving": common_pb2.SERVING_STATE_SERVING,
    "draining": common_pb2.SERVING_STATE_DRAINING,
    "stopped": common_pb2.SERVING_STATE_DRAINING,
}


def _group(prompt: str, image: Any, has_image: bool, responses: Any, group_id: str = "") -> GroupInput:
    return GroupInput(
        prompt=prompt,
        responses=list(responses),
        image_data=bytes(image.data) if has_image else None,
        mime_type=image.mime_type if has_image else "",
        group_id=group_id,
    )


def _scores(answers: list[ScoredAnswer], return_parts: bool) -> list[Any]:
    return [reward_node_pb2.Score(overall=a.overall, parts=a.parts if return_parts else None) for a in answers]


def node_info(d: NodeDescription) -> Any:
    """NodeInfo message of a description."""
    lim = d.limits
    info = reward_node_pb2.NodeInfo(
        node_id=d.node_id,
        rm_kind=d.rm_kind,
        objectives=d.objectives,
        score_range=reward_node_pb2.ScoreRange(),  # unbounded both ways: the RM score is a real number
        score_mean=d.score_mean,
        score_std=d.score_std,
        model_version=d.model_version,
        limits=reward_node_pb2.NodeLimits(
            max_responses=lim.max_responses,
            max_prompt_chars=lim.max_prompt_chars,
            max_response_chars=lim.max_response_chars,
            image=common_pb2.ImageLimits(max_image_bytes=lim.max_image_bytes, allowed_mime_types=list(lim.image_mime_types)),
            max_batch_groups=lim.max_batch_groups,
        ),
        serving_state=SERVING_STATES[d.state],
    )
    if d.prototype is not None:
        info.domain_prototype.CopyFrom(reward_node_pb2.DomainPrototype(
            embedding=d.prototype.embedding, noise_sigma=d.prototype.noise_sigma, embedder=d.prototype.embedder,
            dp_epsilon=d.prototype.epsilon, dp_delta=d.prototype.delta, clip_norm=d.prototype.clip_norm,
        ))
    return info


class RewardNodeServicer(reward_node_pb2_grpc.RewardNodeServicer):
    """Score, ScoreBatch and GetInfo, each a few lines of conversion around the core."""

    def __init__(self, core: RewardNodeCore) -> None:
        self.core = core

    async def Score(self, request: Any, context: Any) -> Any:
        group = _group(request.prompt, request.image, request.HasField("image"), request.responses)
        (answers,) = await self.core.score_groups([group])
        return reward_node_pb2.ScoreResponse(
            scores=_scores(answers, request.return_parts),
            node_id=self.core.node_id,
            model_version=self.core.model_version,
            request_id=request.request_id or current_request_id(),
        )

    async def ScoreBatch(self, request: Any, context: Any) -> Any:
        groups = [_group(g.prompt, g.image, g.HasField("image"), g.responses, g.group_id) for g in request.groups]
        results = await self.core.score_groups(groups, batch_call=True)
        return reward_node_pb2.ScoreBatchResponse(
            groups=[
                reward_node_pb2.ScoreGroupResult(group_id=g.group_id, scores=_scores(r, request.return_parts))
                for g, r in zip(groups, results, strict=True)
            ],
            node_id=self.core.node_id,
            model_version=self.core.model_version,
            request_id=request.request_id or current_request_id(),
        )

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return reward_node_pb2.RewardNodeGetInfoResponse(info=node_info(self.core.describe()))


__all__ = ["SERVING_STATES", "RewardNodeServicer", "node_info"]
