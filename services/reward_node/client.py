"""A small typed client for mor.v1.RewardNode, used by the orchestrator and the tests.

    async with RewardNodeClient(EndpointSection(address="clinic:50051", tls=..., auth=...)) as node:
        result = await node.score("How many shapes?", ["three", "3"], image=png_bytes)
        info = await node.info()

Every call has a deadline (``timeout``, default the endpoint's ``timeout_s``). Score and GetInfo
are idempotent and are retried on UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED with
exponential back-off and jitter (services.common.grpc.call_with_retry); ScoreBatch is not retried
by default: it is large, and retrying it into an overloaded node makes the overload worse.
Keepalive, TLS / mTLS, the bearer token and the message-size limit come from the shared channel
factory. Results are plain dataclasses; callers never see protobuf.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import AuthSection, EndpointSection, TLSSection
from services.common.grpc import call_with_retry, create_channel
from services.common.grpc.client import DEFAULT_MAX_MESSAGE_BYTES
from services.common.grpc.interceptors import REQUEST_ID_KEY
from services.common.wire import common_pb2, reward_node_pb2, reward_node_pb2_grpc

SERVICE = "mor.v1.RewardNode"
_STATES = {
    common_pb2.SERVING_STATE_UNSPECIFIED: "unspecified",
    common_pb2.SERVING_STATE_LOADING: "loading",
    common_pb2.SERVING_STATE_SERVING: "serving",
    common_pb2.SERVING_STATE_DRAINING: "draining",
}


@dataclass(frozen=True)
class ScoreGroup:
    """One group to score: a prompt, its image (encoded bytes, or None) and the answers."""

    prompt: str
    responses: Sequence[str]
    image: bytes | None = None
    mime_type: str = "image/png"
    group_id: str = ""


@dataclass(frozen=True)
class GroupScores:
    """Scores of one group, in the order of its responses; ``parts`` is empty unless asked for."""

    scores: list[float]
    parts: list[dict[str, float]]
    group_id: str = ""


@dataclass(frozen=True)
class ScoreResult(GroupScores):
    """A Score reply: the group's scores plus who scored them."""

    node_id: str = ""
    model_version: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class BatchResult:
    """A ScoreBatch reply: one GroupScores per requested group, in request order."""

    groups: list[GroupScores]
    node_id: str = ""
    model_version: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class NodeLimitsInfo:
    """What the node accepts per call (0: not published)."""

    max_responses: int
    max_prompt_chars: int
    max_response_chars: int
    max_image_bytes: int
    allowed_mime_types: list[str]
    max_batch_groups: int


@dataclass(frozen=True)
class NodeInfo:
    """GetInfo, typed. ``score_min``/``score_max`` are None when unbounded."""

    node_id: str
    rm_kind: str
    objectives: list[str]
    score_mean: float
    score_std: float
    model_version: str
    limits: NodeLimitsInfo
    serving_state: str
    score_min: float | None = None
    score_max: float | None = None
    prototype: list[float] | None = None
    prototype_noise_sigma: float = 0.0
    prototype_embedder: str = ""
    prototype_epsilon: float = float("inf")  # (epsilon, delta)-DP guarantee of the prototype; inf: none
    prototype_delta: float = 0.0


def _image(data: bytes | None, mime_type: str) -> common_pb2.Image | None:
    return None if data is None else common_pb2.Image(data=data, mime_type=mime_type)


def _group_scores(scores: Sequence[reward_node_pb2.Score], group_id: str = "") -> GroupScores:
    return GroupScores([s.overall for s in scores], [dict(s.parts) for s in scores], group_id)


# Channel-level retry of UNAVAILABLE only, a few times and quickly: behind one address with several
# replicas (round_robin), a call that met a replica going away is sent again to another one, so a
# dying replica costs no scores. Overload (RESOURCE_EXHAUSTED) is not retried here, and against a
# single node that is down the retries fail at once, well inside the fan-out's deadline.
REPLICA_RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "mor.v1.RewardNode"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


class RewardNodeClient:
    """Async client of one reward node; see the module docstring. Close it (or use ``async with``)."""

    def __init__(
        self,
        endpoint: EndpointSection,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        jitter: float = 0.2,
        server_name: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self._retry = {"backoff": backoff_s, "max_backoff": max_backoff_s, "jitter": jitter}
        self._channel = create_channel(endpoint, max_message_bytes=max_message_bytes, server_name=server_name,
                                       extra_options=[("grpc.service_config", REPLICA_RETRY_CONFIG)])
        self._stub = reward_node_pb2_grpc.RewardNodeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        insecure: bool = False,
        ca_cert: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        **kwargs: object,
    ) -> RewardNodeClient:
        """Shorthand without building config sections: TLS with ``ca_cert`` (mTLS with cert + key),
        or plaintext with ``insecure=True``; ``token`` is the bearer token."""
        tls = TLSSection(insecure=insecure, ca_cert=ca_cert, cert=cert, key=key)
        auth = AuthSection(token=token) if token else AuthSection()
        return cls(EndpointSection(address=address, tls=tls, auth=auth, timeout_s=timeout_s), **kwargs)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> RewardNodeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _timeout(self, timeout: float | None) -> float:
        return self.endpoint.timeout_s if timeout is None else timeout

    @staticmethod
    def _metadata(request_id: str) -> list[tuple[str, str]] | None:
        return [(REQUEST_ID_KEY, request_id)] if request_id else None

    # ---- calls ------------------------------------------------------------------------------------
    async def score(
        self,
        prompt: str,
        responses: Sequence[str],
        image: bytes | None = None,
        mime_type: str = "image/png",
        *,
        return_parts: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> ScoreResult:
        """Scores of one group (idempotent: retried with back-off on transient failures)."""
        req = reward_node_pb2.ScoreRequest(
            request_id=request_id, prompt=prompt, image=_image(image, mime_type), responses=list(responses),
            return_parts=return_parts,
        )
        resp = await call_with_retry(
            self._stub.Score, req, timeout=self._timeout(timeout), retries=self.retries,
            metadata=self._metadata(request_id), **self._retry,
        )
        g = _group_scores(resp.scores)
        return ScoreResult(g.scores, g.parts, "", resp.node_id, resp.model_version, resp.request_id)

    async def score_batch(
        self,
        groups: Sequence[ScoreGroup],
        *,
        return_parts: bool = False,
        request_id: str = "",
        timeout: float | None = None,
        retries: int = 0,
    ) -> BatchResult:
        """Scores of many groups in one call; all or nothing. Not retried unless ``retries`` > 0."""
        req = reward_node_pb2.ScoreBatchRequest(
            request_id=request_id,
            groups=[
                reward_node_pb2.ScoreGroup(group_id=g.group_id, prompt=g.prompt, image=_image(g.image, g.mime_type),
                                           responses=list(g.responses))
                for g in groups
            ],
            return_parts=return_parts,
        )
        resp = await call_with_retry(
            self._stub.ScoreBatch, req, timeout=self._timeout(timeout), retries=retries,
            metadata=self._metadata(request_id), **self._retry,
        )
        return BatchResult([_group_scores(r.scores, r.group_id) for r in resp.groups], resp.node_id,
                           resp.model_version, resp.request_id)

    async def info(self, *, timeout: float | None = None) -> NodeInfo:
        """The node's description (idempotent: retried)."""
        resp = await call_with_retry(
            self._stub.GetInfo, reward_node_pb2.RewardNodeGetInfoRequest(), timeout=self._timeout(timeout),
            retries=self.retries, **self._retry,
        )
        i = resp.info
        lim = i.limits
        proto = i.domain_prototype if i.HasField("domain_prototype") else None
        return NodeInfo(
            node_id=i.node_id,
            rm_kind=i.rm_kind,
            objectives=list(i.objectives),
            score_mean=i.score_mean,
            score_std=i.score_std,
            model_version=i.model_version,
            limits=NodeLimitsInfo(lim.max_responses, lim.max_prompt_chars, lim.max_response_chars,
                                  lim.image.max_image_bytes, list(lim.image.allowed_mime_types), lim.max_batch_groups),
            serving_state=_STATES.get(i.serving_state, "unspecified"),
            score_min=i.score_range.min if i.score_range.HasField("min") else None,
            score_max=i.score_range.max if i.score_range.HasField("max") else None,
            prototype=list(proto.embedding) if proto is not None else None,
            prototype_noise_sigma=proto.noise_sigma if proto is not None else 0.0,
            prototype_embedder=proto.embedder if proto is not None else "",
            prototype_epsilon=proto.dp_epsilon if proto is not None else float("inf"),
            prototype_delta=proto.dp_delta if proto is not None else 0.0,
        )

    async def health(self, service: str = SERVICE, *, timeout: float | None = None) -> str:
        """grpc.health.v1 status name of ``service`` ("SERVING", "NOT_SERVING", ...); "" is the whole server."""
        resp = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._timeout(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


__all__ = [
    "BatchResult",
    "GroupScores",
    "NodeInfo",
    "NodeLimitsInfo",
    "RewardNodeClient",
    "ScoreGroup",
    "ScoreResult",
]
