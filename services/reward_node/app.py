"""Builds a reward node from its settings and runs its life cycle.

    app = RewardNodeApp(settings)      # servicer + GrpcService, nothing started
    port = await app.start()           # bind (health NOT_SERVING), load the RM, then SERVING
    await app.run()                    # start + SIGTERM/SIGINT handling + wait; what `mor reward-node serve` runs
    await app.stop()                   # drain: health NOT_SERVING, in-flight calls finish within server.grace_s

Start-up fails early, before the port is bound, on a config that cannot work (no checkpoint, a
queue smaller than one request, TLS files missing); those errors name the field.
"""
from __future__ import annotations

import logging

from services.common.config import ConfigError, RewardNodeSettings
from services.common.grpc import GrpcService, service_name
from services.common.wire import reward_node_pb2, reward_node_pb2_grpc
from services.reward_node.checkpoint import CheckpointError, LoadedRM, read_metadata
from services.reward_node.node import RewardNodeCore
from services.reward_node.servicer import RewardNodeServicer

log = logging.getLogger(__name__)

SERVICE_NAME = service_name(reward_node_pb2, "RewardNode")


def check_settings(settings: RewardNodeSettings, *, need_checkpoint: bool = True) -> None:
    """Environment checks at start-up (the static ones live in the settings model)."""
    if settings.batching.max_queue < settings.limits.max_responses:
        raise ConfigError(
            f"batching.max_queue ({settings.batching.max_queue}) must be >= limits.max_responses "
            f"({settings.limits.max_responses}), or a full group could never be admitted"
        )
    if not need_checkpoint:
        return
    if settings.model.checkpoint is None:
        raise ConfigError("model.checkpoint: required to serve (train one with `mor reward-node train`)")
    try:
        meta = read_metadata(settings.model.checkpoint)
    except CheckpointError as exc:
        raise ConfigError(f"model.checkpoint: {exc}") from None
    if meta.get("kind") != settings.model.kind:
        raise ConfigError(
            f"model.kind is {settings.model.kind!r} but the checkpoint at {settings.model.checkpoint} "
            f"holds a {meta.get('kind')!r} RM"
        )


class RewardNodeApp:
    """One reward node: core (RM, batcher, rules), gRPC servicer, and the shared server life cycle."""

    def __init__(self, settings: RewardNodeSettings, *, loaded: LoadedRM | None = None) -> None:
        """``loaded``: serve this in-memory RM instead of loading model.checkpoint (tests, benchmarks)."""
        self.settings = settings
        self._injected = loaded is not None
        self.core = RewardNodeCore(settings, loaded)
        self.servicer = RewardNodeServicer(self.core)
        self.service = GrpcService(
            "reward-node",
            server=settings.server,
            tls=settings.tls,
            auth=settings.auth,
            metrics=settings.metrics if settings.metrics.enabled else None,
        )
        self.service.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server, self.servicer, SERVICE_NAME)

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def address(self) -> str:
        return self.service.address

    async def start(self) -> int:
        """Check, bind (health NOT_SERVING), load the RM, then report SERVING. Returns the port."""
        check_settings(self.settings, need_checkpoint=not self._injected)
        port = await self.service.start()
        try:
            await self.core.load()
        except BaseException:
            await self.service.stop(0)
            await self.core.close()
            raise
        await self.service.set_ready()
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, finish in-flight ones, then stop the batcher."""
        self.core.begin_drain()
        await self.service.stop(grace)
        await self.core.close()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (first: drain for server.grace_s; second: stop at once)."""
        await self.start()
        self.service.install_signal_handlers()
        log.info("reward node %s serving on %s", self.settings.node_id, self.service.address)
        try:
            await self.service.wait_for_termination()
        finally:
            self.core.begin_drain()
            await self.service.stop(0)
            await self.core.close()


def build_app(settings: RewardNodeSettings, *, loaded: LoadedRM | None = None) -> RewardNodeApp:
    """The factory the CLI and tests use."""
    return RewardNodeApp(settings, loaded=loaded)


__all__ = ["SERVICE_NAME", "RewardNodeApp", "build_app", "check_settings"]
