"""`mor sampler serve`: the sampler service built from its settings, with its start-up and teardown.

    app = SamplerApp(settings)
    port = await app.start()   # bind (health NOT_SERVING), load the policy, then SERVING
    ...
    await app.stop()           # NOT_SERVING, drain in-flight calls for server.grace_s, release the model

`serve(settings)` does the same for the CLI, with SIGTERM/SIGINT handlers, until the server stops.
Readiness (gRPC health, /readyz) turns on only once the initial policy is loaded.
"""

from __future__ import annotations

import logging
from types import TracebackType

from services.common.config import SamplerSettings
from services.common.config.variants import SAMPLER_BACKENDS, implementation
from services.common.grpc import GrpcService, service_name
from services.common.wire import policy_sampler_pb2, policy_sampler_pb2_grpc
from services.policy_sampler.backends.base import SamplerBackend
from services.policy_sampler.sampler import Sampler
from services.policy_sampler.servicer import PolicySamplerServicer

log = logging.getLogger(__name__)

SERVICE = service_name(policy_sampler_pb2, "PolicySampler")


def build_backend(settings: SamplerSettings) -> SamplerBackend:
    """The backend `settings.backend` names; a vllm backend without vllm or a GPU is a ConfigError."""
    backend: type[SamplerBackend] = implementation(SAMPLER_BACKENDS, settings.backend, "sampler backend")
    return backend.build(settings)


class SamplerApp:
    """The sampler's gRPC service and its life cycle."""

    def __init__(self, settings: SamplerSettings, backend: SamplerBackend | None = None) -> None:
        """`backend`: a ready-made backend (tests, benchmarks); default: built from settings."""
        self.settings = settings
        self.sampler = Sampler(settings, backend or build_backend(settings))
        self.service = GrpcService(
            "sampler", server=settings.server, tls=settings.tls, auth=settings.auth, metrics=settings.metrics
        )
        self.service.add_servicer(
            policy_sampler_pb2_grpc.add_PolicySamplerServicer_to_server, PolicySamplerServicer(self.sampler), SERVICE
        )

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def address(self) -> str:
        return self.service.address

    async def start(self) -> int:
        """Bind and start (NOT_SERVING), load the initial policy, then report SERVING. Returns the port."""
        port = await self.service.start()
        try:
            facts = await self.sampler.load()
        except BaseException:
            await self.service.stop(0)
            await self.sampler.close()
            raise
        await self.service.set_ready()
        log.info("sampler: serving %s with the %s backend on port %d", facts.name, self.sampler.backend.name, port)
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: refuse new work, let in-flight calls finish, release the backend."""
        self.sampler.begin_drain()
        try:
            await self.service.stop(grace)
        finally:
            await self.sampler.close()

    async def wait(self) -> None:
        """Block until the server stops (after `stop()` or a signal), then release the backend."""
        await self.service.wait_for_termination()
        await self.sampler.close()

    async def __aenter__(self) -> SamplerApp:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop(None if exc is None else 0.0)


async def serve(settings: SamplerSettings) -> None:
    """Run the sampler until SIGTERM/SIGINT (first: drain for server.grace_s; second: stop now)."""
    app = SamplerApp(settings)
    await app.start()
    app.service.install_signal_handlers()
    await app.wait()


__all__ = ["SERVICE", "SamplerApp", "build_backend", "serve"]
