"""`GrpcService`: the life cycle every MoR gRPC server shares, knowing nothing of what it serves.

    service = GrpcService("reward-node", server=s.server, tls=s.tls, auth=s.auth, metrics=s.metrics)
    service.add_servicer(reward_node_pb2_grpc.add_RewardNodeServicer_to_server, servicer,
                         service_name(reward_node_pb2, "RewardNode"))
    port = await service.start()          # health: NOT_SERVING; checks TLS files, binds, starts
    ... load the model ...
    await service.set_ready()             # health SERVING, /readyz 200
    service.install_signal_handlers()     # SIGTERM/SIGINT -> graceful stop
    await service.wait_for_termination()

Stopping is graceful: health goes NOT_SERVING for good (callers drain first), then the server
refuses new calls (UNAVAILABLE) and gives in-flight ones `server.grace_s` seconds to finish. A
second signal stops at once. Calls beyond `server.max_concurrent_rpcs` get RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from types import ModuleType, TracebackType
from typing import Any

from google.protobuf import descriptor_pool
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.certs import CertError, read_tokens
from services.common.config import AuthSection, ConfigError, MetricsSection, ServerSection, TLSSection
from services.common.grpc.credentials import server_credentials, server_options
from services.common.grpc.interceptors import default_interceptors
from services.common.metrics import MetricsServer, start_metrics_server

log = logging.getLogger(__name__)

OVERALL = ""  # the health-check name of the whole server


def service_name(pb2_module: ModuleType, service: str) -> str:
    """Full proto name of a service in a generated module: (reward_node_pb2, "RewardNode") ->
    "mor.v1.RewardNode"."""
    try:
        return pb2_module.DESCRIPTOR.services_by_name[service].full_name
    except KeyError:
        known = ", ".join(pb2_module.DESCRIPTOR.services_by_name)
        raise ValueError(f"{pb2_module.__name__} has no service {service!r} (has: {known})") from None


def load_token_digests(auth: AuthSection, *, cert_identities: bool = False) -> dict[str, str]:
    """Server-side tokens from auth.tokens_file ({} when unset); errors name the field.
    Allow-lists need an identity source: tokens, or (`cert_identities`) verified client certificates."""
    if auth.tokens_file is None:
        if auth.restricts_callers and not cert_identities:
            which = "auth.allowed_callers" if "allowed_callers" in auth.model_fields_set else "auth.methods"
            raise ConfigError(f"{which} needs auth.tokens_file or tls.require_client_auth "
                              "(callers are identified by token or client certificate)")
        return {}
    try:
        digests = read_tokens(auth.tokens_file)
    except CertError as exc:
        raise ConfigError(f"auth.tokens_file: {exc}") from None
    if not digests:
        raise ConfigError(f"auth.tokens_file: {auth.tokens_file} holds no tokens; every call would be refused")
    return digests


class GrpcService:
    """One grpc.aio server with MoR's interceptors, health, reflection, metrics side port and
    graceful shutdown. Domain-free: services plug in through `add_servicer`."""

    def __init__(
        self,
        name: str,
        *,
        server: ServerSection,
        tls: TLSSection,
        auth: AuthSection | None = None,
        metrics: MetricsSection | None = None,
        reflection: bool = True,
        extra_interceptors: Sequence[aio.ServerInterceptor] = (),
    ) -> None:
        """`name` labels logs ("reward-node"). `metrics` None: no side HTTP port. `extra_interceptors`
        run after the standard chain (auth -> request id -> metrics -> exception-to-status)."""
        self.name = name
        self._server_cfg = server
        self._tls = tls
        self._auth = auth or AuthSection()
        self._metrics_cfg = metrics
        self._reflection = reflection
        self._extra = list(extra_interceptors)
        self._servicers: list[tuple[Callable[[Any, aio.Server], None], Any, str]] = []
        self._server: aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._metrics_server: MetricsServer | None = None
        self._port: int | None = None
        self._ready = False
        self._stop_task: asyncio.Task[None] | None = None
        self._stop_grace: float | None = None
        self._signals: list[signal.Signals] = []
        self._stopped = asyncio.Event()

    # --- set-up --------------------------------------------------------------------------

    def add_servicer(self, add_fn: Callable[[Any, aio.Server], None], servicer: Any, name: str) -> None:
        """Register a servicer: `add_fn` is the generated add_XServicer_to_server, `name` the full
        service name (see `service_name`) used for health status and reflection."""
        if self._server is not None:
            raise RuntimeError("add_servicer must be called before start()")
        self._servicers.append((add_fn, servicer, name))

    @property
    def service_names(self) -> list[str]:
        return [name for _, _, name in self._servicers]

    def method_names(self) -> list[str]:
        """Short names of every method of the added services (from the proto descriptors)."""
        pool = descriptor_pool.Default()
        names: list[str] = []
        for service in self.service_names:
            try:
                names.extend(m.name for m in pool.FindServiceByName(service).methods)
            except KeyError:
                continue
        return names

    def _check_methods(self) -> None:
        """auth.methods may only name methods this server has: a typo would silently fall back to
        allowed_callers."""
        known = self.method_names()
        unknown = sorted(set(self._auth.methods) - set(known))
        if unknown and known:
            raise ConfigError(f"auth.methods: unknown method(s) {', '.join(unknown)} (this server has: "
                              f"{', '.join(sorted(set(known)))})")

    async def start(self) -> int:
        """Check TLS and tokens, build and bind the server, start it with every health status
        NOT_SERVING, and start the metrics side port. Returns the bound gRPC port."""
        if self._server is not None:
            raise RuntimeError(f"{self.name}: already started")
        if not self._servicers:
            raise RuntimeError(f"{self.name}: no servicer added")
        creds = server_credentials(self._tls)  # checks tls.* files, names the field on error
        cert_identities = creds is not None and self._tls.require_client_auth
        digests = load_token_digests(self._auth, cert_identities=cert_identities)
        self._check_methods()
        if not digests and not cert_identities:
            log.warning("%s: no auth.tokens_file and no client certificates (tls.require_client_auth): every caller "
                        "is accepted and no per-method allow-list applies", self.name)

        cfg = self._server_cfg
        server = aio.server(
            interceptors=[*default_interceptors(digests, callers=self._auth.callers_for,
                                                cert_identities=cert_identities,
                                                cert_field=self._auth.cert_identity), *self._extra],
            options=server_options(cfg.max_message_bytes),
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for add_fn, servicer, _ in self._servicers:
            add_fn(servicer, server)
        if self._reflection:
            reflection.enable_server_reflection(
                [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME],
                server,
            )
        for name in (OVERALL, *self.service_names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

        host = f"[{cfg.host}]" if ":" in cfg.host and not cfg.host.startswith("[") else cfg.host
        address = f"{host}:{cfg.port}"
        try:
            port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"server.port: cannot bind {address}: {exc}") from None
        if not port:
            raise ConfigError(f"server.port: cannot bind {address}")
        await server.start()
        self._server, self._health, self._port = server, health_servicer, port
        log.info("%s: gRPC on %s:%d (%s), services: %s", self.name, cfg.host, port,
                 "plaintext" if creds is None else ("mTLS" if self._tls.require_client_auth else "TLS"),
                 ", ".join(self.service_names))
        if self._metrics_cfg is not None:
            try:
                self._metrics_server, _ = await start_metrics_server(self._metrics_cfg, self.is_ready)
            except BaseException:
                await server.stop(0)
                self._server = self._health = self._port = None
                raise
        return port

    # --- state ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._port

    @property
    def address(self) -> str:
        """host:port clients dial (the configured host with the bound port)."""
        return f"{self._server_cfg.host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server is not None else None

    def is_ready(self) -> bool:
        """True between set_ready() and the start of a stop; feeds /readyz."""
        return self._ready

    async def set_ready(self, ready: bool = True) -> None:
        """Report SERVING (or NOT_SERVING with ready=False) for the server and every service.
        Ignored once a stop has begun: a draining server never turns ready again."""
        if self._health is None:
            raise RuntimeError(f"{self.name}: set_ready before start()")
        if self._stop_task is not None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (OVERALL, *self.service_names):
            await self._health.set(name, status)
        self._ready = ready
        log.info("%s: %s", self.name, "ready (SERVING)" if ready else "not ready (NOT_SERVING)")

    # --- shutdown ------------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING for good, refuse new calls, let in-flight ones run
        up to `grace` seconds (default server.grace_s), then stop the metrics port. Safe to call
        again: a later call with a shorter grace cuts the wait."""
        if self._server is None:
            return
        grace = self._server_cfg.grace_s if grace is None else grace
        if self._stop_task is None:
            self._stop_grace = grace
            self._stop_task = asyncio.ensure_future(self._stop(grace))
        elif self._stop_grace is not None and grace < self._stop_grace and not self._stop_task.done():
            log.warning("%s: cutting the drain short (grace %.1fs)", self.name, grace)
            self._stop_grace = grace
            await self._server.stop(grace)
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        assert self._server is not None and self._health is not None
        self._ready = False
        log.info("%s: draining (grace %.1fs)", self.name, grace)
        try:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace)
        finally:
            if self._metrics_server is not None:
                await self._metrics_server.stop()
            self._remove_signal_handlers()
            self._stopped.set()
            log.info("%s: stopped", self.name)

    async def wait_for_termination(self) -> None:
        """Block until the server has stopped (by `stop()` or a signal)."""
        if self._server is None:
            raise RuntimeError(f"{self.name}: not started")
        await self._stopped.wait()

    def install_signal_handlers(self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """On the first signal, stop gracefully; on a second one, stop at once (grace 0).
        For CLI entry points; needs the running loop's main thread (Unix)."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals.append(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        first = self._stop_task is None
        log.warning("%s: got %s, %s", self.name, sig.name, "draining" if first else "stopping now")
        asyncio.ensure_future(self.stop(None if first else 0.0))

    def _remove_signal_handlers(self) -> None:
        if not self._signals:
            return
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    async def __aenter__(self) -> GrpcService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop(None if exc is None else 0.0)


@contextlib.asynccontextmanager
async def serving(apps: Sequence[Any]) -> AsyncIterator[Sequence[Any]]:
    """Start in-process servers (anything with ``start()``/``stop(grace)``) in order, yield them, and
    stop the started ones at once on exit, also when a later one fails to start: scripts and
    experiments that host reward nodes or samplers in their own event loop leak no bound port."""
    started = []
    try:
        for app in apps:
            await app.start()
            started.append(app)
        yield apps
    finally:
        for app in reversed(started):
            with contextlib.suppress(Exception):
                await app.stop(0)


__all__ = ["OVERALL", "GrpcService", "load_token_digests", "service_name", "serving"]
