"""Fan-out of one step's groups to the K reward nodes, with a deadline, a quorum and node health.

    fanout = RewardFanout(cfg.nodes, cfg.fanout)
    infos = await fanout.start()                  # channels + GetInfo of every node
    result = await fanout.score(groups)           # FanoutResult: raw scores[K, N], mask[K, N], outcomes
    result = await fanout.score_answers(prompts, answers)  # one step's B prompts x G answers, N = B*G
    await fanout.close()

This is the only orchestrator module that talks gRPC (through RewardNodeClient); what comes out
is plain tensors and dataclasses. Rules of one ``score`` call:
  * every healthy node is called at once; a node's groups are split into ScoreBatch calls of at
    most its published ``limits.max_batch_groups`` (at most ``cfg.max_inflight_chunks`` in flight);
  * each call's deadline is min(node.timeout_s, time left of cfg.step_deadline_s); ScoreBatch is
    never retried inside a step (a retry into a deadline only delays the step);
  * a node that fails or is late in any of its calls is dropped for the step as a whole, logged
    with its id and status, counted in mor_orchestrator_node_failed_requests, and marked
    unhealthy. Its partial results are discarded: the router's "available" set is per node;
  * fewer than ``cfg.min_nodes`` answering nodes raises QuorumError (the result rides along);
  * before the next step, each unhealthy node's channel is closed and the node is probed over a
    *fresh* channel (grpc.health Check, then GetInfo, each with cfg.health_timeout_s) and
    re-admitted when SERVING. A fresh channel because a channel whose peer went away backs off
    its reconnects for up to two minutes, which would keep a restarted node out long after it is
    back. Until then it is skipped (SKIPPED_UNHEALTHY, counted in
    mor_orchestrator_node_skipped_steps).
``score_answers`` scores a step's answers laid out as the trainer sees them (group-major, N = B*G
columns): empty answers are not sent (nodes refuse them) and stay unscored in every row; when every
answer is empty no node is called and every outcome is NOTHING_TO_SCORE.
``add``/``remove`` change the node set between steps (an added node joins through the same
probe); node order in results is the configured order, then added nodes.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from grpc import aio

from services.common import metrics
from services.common.config.run import FanoutSection
from services.common.config.sections import NodeEndpoint
from services.common.errors import AlreadyExists, NotFound, NotReady
from services.common.grpc.tls_diagnosis import adescribe_rpc_error
from services.reward_node.client import NodeInfo, RewardNodeClient, ScoreGroup

if TYPE_CHECKING:
    from services.orchestrator.prompts import Prompt

log = logging.getLogger(__name__)

SKIPPED = "SKIPPED_UNHEALTHY"
DEADLINE = "DEADLINE_EXCEEDED"
INVALID_REPLY = "INVALID_REPLY"
NOT_SERVING = "NOT_SERVING"
NOTHING_TO_SCORE = "NOTHING_TO_SCORE"
SAFETY_SLACK_S = 1.0  # beyond the per-call gRPC deadlines, a last guard so a step can never hang


class QuorumError(NotReady):
    """Fewer nodes answered than fanout.min_nodes; ``result`` holds what did come back (if any)."""

    reason = "QUORUM_NOT_MET"

    def __init__(self, message: str, *, result: FanoutResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class _BadReply(Exception):
    """A node's reply does not match the request (group or response counts)."""


@dataclass(frozen=True)
class NodeOutcome:
    """How one node did in one scoring round; ``error_code`` is "" when it answered."""

    node_id: str
    responded: bool
    error_code: str
    latency_s: float


@dataclass(frozen=True)
class FanoutResult:
    """Raw scores of one round. N = all responses of all groups, flattened group-major."""

    node_ids: tuple[str, ...]
    scores: torch.Tensor  # [K, N] float32, NaN where missing
    mask: torch.Tensor  # [K, N] bool, True where the node answered with a finite score
    outcomes: dict[str, NodeOutcome]

    @property
    def responded(self) -> list[str]:
        return [n for n in self.node_ids if self.outcomes[n].responded]

    @property
    def dropped(self) -> dict[str, str]:
        """node id -> error code of the nodes that did not answer."""
        return {n: self.outcomes[n].error_code for n in self.node_ids if not self.outcomes[n].responded}


async def _all_or_nothing(coros: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class RewardFanout:
    """Scores groups on all reward nodes; see the module docstring."""

    def __init__(self, nodes: Sequence[NodeEndpoint], cfg: FanoutSection) -> None:
        self.cfg = cfg
        self._endpoints: dict[str, NodeEndpoint] = {}
        self._clients: dict[str, RewardNodeClient] = {}
        self._retired: list[RewardNodeClient] = []  # clients of removed nodes, closed before the next round
        self.healthy: dict[str, bool] = {}
        self.infos: dict[str, NodeInfo] = {}
        self.last_errors: dict[str, str] = {}  # why a node's last GetInfo failed (TLS failures explained)
        for ep in nodes:
            self._register(ep)

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(self._endpoints)

    def _register(self, ep: NodeEndpoint) -> None:
        if ep.node_id in self._endpoints:
            raise AlreadyExists(f"node {ep.node_id!r} is already in the fan-out")
        self._endpoints[ep.node_id] = ep
        self._set_health(ep.node_id, False)

    def _set_health(self, node_id: str, ok: bool) -> None:
        self.healthy[node_id] = ok
        metrics.ORCHESTRATOR_NODE_HEALTHY.labels(node_id).set(1.0 if ok else 0.0)

    # ---- life cycle -----------------------------------------------------------------------------
    async def start(self) -> dict[str, NodeInfo]:
        """Open a channel to every node and read its Info; a node that fails is marked unhealthy
        (and probed again before each step). QuorumError when fewer than min_nodes are healthy."""
        for node, ep in self._endpoints.items():
            if node not in self._clients:
                self._clients[node] = RewardNodeClient(ep)
        await asyncio.gather(*(self._read_info(n, self._clients[n], self._endpoints[n].timeout_s) for n in self.node_ids))
        up = [n for n in self.node_ids if self.healthy[n]]
        if len(up) < self.cfg.min_nodes:
            down = "; ".join(f"{n}: {self.last_errors[n]}" for n in self.node_ids if n in self.last_errors)
            raise QuorumError(f"only {len(up)} of {len(self.node_ids)} reward nodes are up at start "
                              f"({', '.join(up) or 'none'}); fanout.min_nodes={self.cfg.min_nodes}"
                              + (f"; {down}" if down else ""))
        return dict(self.infos)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), self._close_retired(), return_exceptions=True)

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        await asyncio.gather(*(c.close() for c in retired), return_exceptions=True)

    async def __aenter__(self) -> RewardFanout:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add(self, endpoint: NodeEndpoint) -> None:
        """Add a node between steps; it is probed and admitted before the next ``score``."""
        self._register(endpoint)

    def remove(self, node_id: str) -> None:
        """Remove a node between steps; its channel is closed before the next round (or on close)."""
        if node_id not in self._endpoints:
            raise NotFound(f"no node {node_id!r} in the fan-out (have {', '.join(self.node_ids) or 'none'})")
        del self._endpoints[node_id]
        self.healthy.pop(node_id, None)
        self.infos.pop(node_id, None)
        client = self._clients.pop(node_id, None)
        if client is not None:
            self._retired.append(client)
        try:
            metrics.ORCHESTRATOR_NODE_HEALTHY.remove(node_id)
        except KeyError:
            pass

    # ---- health ---------------------------------------------------------------------------------
    async def _read_info(self, node: str, client: RewardNodeClient, timeout: float) -> bool:
        """GetInfo; healthy when the node says it is serving. Never raises."""
        try:
            info = await client.info(timeout=timeout)
        except Exception as exc:  # any failure leaves the node out until a later probe
            why = _code(exc)
            if isinstance(exc, aio.AioRpcError) and node in self._endpoints:
                ep = self._endpoints[node]
                why = await adescribe_rpc_error(exc, ep.address, ep.tls)
            self.last_errors[node] = why
            log.warning("reward node %s: GetInfo failed (%s); marked unhealthy", node, why)
            self._set_health(node, False)
            return False
        self.last_errors.pop(node, None)
        if info.serving_state != "serving":
            log.warning("reward node %s is %s; marked unhealthy", node, info.serving_state)
            self._set_health(node, False)
            return False
        self.infos[node] = info
        self._set_health(node, True)
        return True

    def _fresh_client(self, ep: NodeEndpoint) -> RewardNodeClient:
        """A client on a new channel (channels own their subchannels: see channel_options), so a
        probe does not inherit the failed connection's reconnect back-off."""
        return RewardNodeClient(ep)

    async def _probe(self, node: str) -> None:
        """Re-admit an unhealthy node if its health check says SERVING (see the module docstring)."""
        ep = self._endpoints[node]
        fresh = self._fresh_client(ep)
        timeout = min(ep.timeout_s, self.cfg.health_timeout_s)
        try:
            status = await fresh.health(timeout=timeout)
        except Exception as exc:
            log.info("reward node %s still unhealthy: health check %s", node, _code(exc))
            status = ""
        if status != "SERVING" or not await self._read_info(node, fresh, timeout):
            await fresh.close()
            return
        self._clients[node] = fresh
        log.info("reward node %s re-admitted (health SERVING)", node)

    async def readmit(self) -> list[str]:
        """Probe every unhealthy node; returns the ids re-admitted."""
        down = [n for n in self.node_ids if not self.healthy[n]]
        # The old channels go: the probe's fresh one replaces them if the node is back.
        self._retired.extend(c for c in (self._clients.pop(n, None) for n in down) if c is not None)
        await self._close_retired()
        await asyncio.gather(*(self._probe(n) for n in down))
        return [n for n in down if self.healthy.get(n)]

    # ---- scoring --------------------------------------------------------------------------------
    async def score(self, groups: Sequence[ScoreGroup], *, request_id: str = "") -> FanoutResult:
        """Raw scores of every response on every node that answered in time; see the module docstring."""
        if not groups or any(len(g.responses) == 0 for g in groups):
            raise ValueError("score() needs at least one group, and every group at least one response")
        await self.readmit()
        ids = self.node_ids
        n = sum(len(g.responses) for g in groups)
        scores = torch.full((len(ids), n), float("nan"))
        mask = torch.zeros(len(ids), n, dtype=torch.bool)
        outcomes: dict[str, NodeOutcome] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.step_deadline_s
        active = [node for node in ids if self.healthy[node] and node in self._clients]
        results = await asyncio.gather(*(self._score_node(node, groups, deadline, request_id) for node in active))
        by_node = dict(zip(active, results, strict=True))
        for k, node in enumerate(ids):
            if node not in by_node:
                outcomes[node] = NodeOutcome(node, False, SKIPPED, 0.0)
                metrics.ORCHESTRATOR_NODE_SKIPPED.labels(node).inc()
                continue
            values, outcome = by_node[node]
            outcomes[node] = outcome
            if values is not None:
                row = torch.tensor(values, dtype=torch.float32)
                scores[k], mask[k] = row, torch.isfinite(row)
            else:
                self._drop(node, outcome)
        result = FanoutResult(ids, scores, mask, outcomes)
        if len(result.responded) < self.cfg.min_nodes:
            metrics.ORCHESTRATOR_QUORUM_FAILURES.inc()
            raise QuorumError(
                f"{len(result.responded)} of {len(ids)} reward nodes answered, fanout.min_nodes={self.cfg.min_nodes} "
                f"(dropped: {', '.join(f'{k}={v}' for k, v in result.dropped.items()) or 'none'})",
                result=result,
            )
        return result

    async def score_answers(self, prompts: Sequence[Prompt], answers: Sequence[Sequence[str]]) -> FanoutResult:
        """Raw scores[K, N] and mask of ``answers[i]``, prompt i's answers, N of them in all, group-major;
        see the module docstring."""
        groups, positions, start = [], [], 0
        for p, group in zip(prompts, answers, strict=True):
            keep = [j for j, text in enumerate(group) if text.strip()]
            if keep:
                groups.append(ScoreGroup(prompt=p.question, responses=[group[j] for j in keep],
                                         image=p.image_png, group_id=p.prompt_id))
                positions.extend(start + j for j in keep)
            start += len(group)
        ids = self.node_ids
        scores = torch.full((len(ids), start), float("nan"))
        mask = torch.zeros(len(ids), start, dtype=torch.bool)
        if not groups:
            return FanoutResult(ids, scores, mask, {n: NodeOutcome(n, False, NOTHING_TO_SCORE, 0.0) for n in ids})
        fan = await self.score(groups)
        index = torch.tensor(positions)
        scores[:, index], mask[:, index] = fan.scores, fan.mask
        return FanoutResult(fan.node_ids, scores, mask, fan.outcomes)

    def _drop(self, node: str, outcome: NodeOutcome) -> None:
        metrics.ORCHESTRATOR_NODE_FAILURES.labels(node, outcome.error_code).inc()
        if node in self._endpoints:  # not removed meanwhile
            self._set_health(node, False)
        log.warning("reward node %s dropped for this step: %s after %.3fs", node, outcome.error_code, outcome.latency_s)

    async def _score_node(
        self, node: str, groups: Sequence[ScoreGroup], deadline: float, request_id: str
    ) -> tuple[list[float] | None, NodeOutcome]:
        """One node's share of a round: (flat scores, outcome) or (None, outcome). Never raises."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        client, ep, info = self._clients[node], self._endpoints[node], self.infos.get(node)
        size = info.limits.max_batch_groups if info is not None and info.limits.max_batch_groups > 0 else len(groups)
        chunks = [groups[s : s + size] for s in range(0, len(groups), size)]
        gate = asyncio.Semaphore(self.cfg.max_inflight_chunks)

        async def call(i: int, chunk: Sequence[ScoreGroup]) -> list[float]:
            async with gate:
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                rid = f"{request_id}-{i}" if request_id else ""
                reply = await client.score_batch(chunk, timeout=min(ep.timeout_s, left), request_id=rid)
            if len(reply.groups) != len(chunk) or any(
                len(r.scores) != len(g.responses) for r, g in zip(reply.groups, chunk, strict=False)
            ):
                raise _BadReply(f"{len(reply.groups)} groups back for {len(chunk)} sent, or a group's count differs")
            return [s for r in reply.groups for s in r.scores]

        code = ""
        values: list[float] | None = None
        try:
            parts = await asyncio.wait_for(
                _all_or_nothing([call(i, c) for i, c in enumerate(chunks)]),
                timeout=max(deadline - loop.time(), 0.0) + SAFETY_SLACK_S,
            )
            values = [s for p in parts for s in p]
        except Exception as exc:
            code = _code(exc)
            if code == "INTERNAL":
                log.exception("reward node %s: unexpected error while scoring", node)
        latency = loop.time() - start
        metrics.ORCHESTRATOR_NODE_LATENCY.labels(node).observe(latency)
        return values, NodeOutcome(node, values is not None, code, latency)


def _code(exc: BaseException) -> str:
    """A short status name for logs and metric labels."""
    if isinstance(exc, aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, asyncio.TimeoutError):
        return DEADLINE
    if isinstance(exc, _BadReply):
        return INVALID_REPLY
    return "INTERNAL"


__all__ = ["NOTHING_TO_SCORE", "FanoutResult", "NodeOutcome", "QuorumError", "RewardFanout"]
