"""`mor orchestrator serve`: the Orchestrator API (run control, node registry) on gRPC, with health,
reflection, auth and a metrics side port, sharing the server life cycle of the other services."""
from __future__ import annotations

import logging

from services.common.config import OrchestratorSettings
from services.common.grpc import GrpcService, service_name
from services.common.wire import orchestrator_pb2, orchestrator_pb2_grpc
from services.orchestrator.parallel import ParallelContext
from services.orchestrator.run_control import RunManager
from services.orchestrator.servicer import OrchestratorServicer

log = logging.getLogger(__name__)

SERVICE_NAME = service_name(orchestrator_pb2, "Orchestrator")


class OrchestratorApp:
    def __init__(self, settings: OrchestratorSettings, parallel: ParallelContext | None = None) -> None:
        self.settings = settings
        self.manager = RunManager(settings, parallel=parallel)
        self.service = GrpcService("orchestrator", server=settings.server, tls=settings.tls, auth=settings.auth,
                                   metrics=settings.metrics if settings.metrics.enabled else None)
        self.service.add_servicer(orchestrator_pb2_grpc.add_OrchestratorServicer_to_server,
                                  OrchestratorServicer(self.manager, settings.auth.operators), SERVICE_NAME)

    @property
    def port(self) -> int:
        return self.service.port

    async def start(self) -> int:
        port = await self.service.start()
        await self.service.set_ready()
        return port

    async def stop(self, grace: float | None = None) -> None:
        await self.manager.shutdown()
        await self.service.stop(grace)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; running runs are asked to stop (and checkpoint) first."""
        await self.start()
        self.service.install_signal_handlers()
        log.info("orchestrator serving on %s", self.service.address)
        try:
            await self.service.wait_for_termination()
        finally:
            await self.manager.shutdown()


__all__ = ["SERVICE_NAME", "OrchestratorApp"]
