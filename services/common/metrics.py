"""Every Prometheus metric MoR exports, declared once, plus the side HTTP server for probes.

Naming: ``mor_<service>_<thing>_<unit>``, lower snake case, the unit last and in base units
(seconds, bytes, ...; see UNITS). Counters are declared without ``_total`` (prometheus-client adds
it). Labels come from a small fixed set (ALLOWED_LABELS): never request ids, prompts or answers.
tests/common/test_metrics.py walks REGISTRY and enforces all of this, so a new metric that breaks
the rule fails the suite.

The metrics live in their own REGISTRY (with the standard process/platform/gc collectors) rather
than prometheus-client's global one, so what we export is exactly what is declared here.

`start_metrics_server` serves, on a side port and on the service's own asyncio loop:
  /metrics  Prometheus text format
  /livez    200 whenever the event loop answers (liveness only: the process is not wedged)
  /readyz   200 when ready() is true, else 503 (model loaded, weights applied, not draining)
Serving probes from the event loop, not a thread, is deliberate: a wedged loop fails /livez.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from services.common.config import ConfigError, MetricsSection

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Families from the standard collectors above; exempt from the mor_ naming rule.
STANDARD_PREFIXES = ("process_", "python_")
SERVICES = ("grpc", "reward_node", "sampler", "orchestrator")
UNITS = (
    "seconds", "bytes", "requests", "attempts", "samples", "tokens", "groups", "steps",
    "ratio",    # a fraction in [0, 1]
    "score",    # a reward on a node's or the fused scale
    "nats",     # KL divergence
    "value",    # a dimensionless quantity that is not a fraction (a loss)
    "version",  # a policy version number
)
ALLOWED_LABELS = frozenset({"service", "method", "code", "node_id", "policy_version", "phase"})

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# --- gRPC, shared by every server and client. `service` is the full gRPC service name
# (mor.v1.RewardNode, grpc.health.v1.Health, ...), `method` its bare method name, `code` a status
# code name (OK, INVALID_ARGUMENT, ...).
GRPC_SERVER_REQUESTS = Counter(
    "mor_grpc_server_requests", "RPCs handled, by final status code.",
    ["service", "method", "code"], registry=REGISTRY,
)
GRPC_SERVER_LATENCY = Histogram(
    "mor_grpc_server_latency_seconds", "Time from handler start to its last response.",
    ["service", "method"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
GRPC_SERVER_IN_FLIGHT = Gauge(
    "mor_grpc_server_in_flight_requests", "RPCs being handled now.",
    ["service", "method"], registry=REGISTRY,
)
GRPC_SERVER_REJECTED = Counter(
    "mor_grpc_server_rejected_requests", "RPCs refused by the auth interceptor before any handler ran.",
    ["service", "method", "code"], registry=REGISTRY,
)
GRPC_CLIENT_RETRIES = Counter(
    "mor_grpc_client_retry_attempts", "Retries of idempotent calls, by the status that caused them.",
    ["service", "method", "code"], registry=REGISTRY,
)

# --- reward node
REWARD_NODE_BATCH_SIZE = Histogram(
    "mor_reward_node_batch_size_samples", "Responses scored in one forward pass (dynamic batching).",
    ["node_id"], buckets=SIZE_BUCKETS, registry=REGISTRY,
)
REWARD_NODE_QUEUE_DEPTH = Gauge(
    "mor_reward_node_queue_depth_samples", "Responses waiting for a forward pass.",
    ["node_id"], registry=REGISTRY,
)
REWARD_NODE_MODEL_LATENCY = Histogram(
    "mor_reward_node_model_latency_seconds", "Time of one reward-model forward pass.",
    ["node_id"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
REWARD_NODE_MODEL_STATE = Gauge(
    "mor_reward_node_model_state_value",
    "Model load state, numbered as mor.v1.ServingState: 0 not loaded, 1 loading, 2 serving, 3 draining.",
    ["node_id"], registry=REGISTRY,
)
REWARD_NODE_SCORES = Histogram(
    "mor_reward_node_response_score", "Distribution of the overall scores the node returned, one per response.",
    ["node_id"], buckets=(-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0), registry=REGISTRY,
)

# --- policy sampler
SAMPLER_POLICY_VERSION = Gauge(
    "mor_sampler_policy_version", "Policy version the sampler currently serves.", registry=REGISTRY,
)
SAMPLER_GENERATED_TOKENS = Counter(
    "mor_sampler_generated_tokens", "Completion tokens generated.", registry=REGISTRY,
)
SAMPLER_GENERATE_LATENCY = Histogram(
    "mor_sampler_generate_latency_seconds", "Time to generate one request's groups.",
    buckets=PHASE_BUCKETS, registry=REGISTRY,
)
SAMPLER_WEIGHT_UPDATE_LATENCY = Histogram(
    "mor_sampler_weight_update_seconds", "Time from the first weight chunk to the swapped-in adapter.",
    buckets=PHASE_BUCKETS, registry=REGISTRY,
)
SAMPLER_BATCH_SIZE = Histogram(
    "mor_sampler_batch_size_samples", "Completions (prompts x group size) asked for in one Generate request.",
    buckets=SIZE_BUCKETS + (2048, 4096), registry=REGISTRY,
)
SAMPLER_QUEUE_DEPTH = Gauge(
    "mor_sampler_queue_depth_samples", "Completions admitted and not finished (running or waiting).",
    registry=REGISTRY,
)
SAMPLER_WEIGHT_UPDATES = Counter(
    "mor_sampler_weight_update_requests", "UpdateWeights calls by outcome (OK, or the refusal's status code).",
    ["code"], registry=REGISTRY,
)

# --- orchestrator (per-node fusion figures are gauges of the latest step)
ORCHESTRATOR_NODE_WEIGHT = Gauge(
    "mor_orchestrator_node_weight_ratio", "Router weight of a node, averaged over the latest step's prompts.",
    ["node_id"], registry=REGISTRY,
)
ORCHESTRATOR_NODE_SCORE_MEAN = Gauge(
    "mor_orchestrator_node_mean_score", "Mean raw score of a node in the latest step.",
    ["node_id"], registry=REGISTRY,
)
ORCHESTRATOR_NODE_SCORE_STD = Gauge(
    "mor_orchestrator_node_std_score", "Standard deviation of a node's raw scores in the latest step.",
    ["node_id"], registry=REGISTRY,
)
ORCHESTRATOR_NODE_FAILURES = Counter(
    "mor_orchestrator_node_failed_requests", "Score calls to a node that failed or were late.",
    ["node_id", "code"], registry=REGISTRY,
)
ORCHESTRATOR_NODE_LATENCY = Histogram(
    "mor_orchestrator_node_score_latency_seconds",
    "Time a node took to score its share of one step (all its ScoreBatch calls), failed attempts included.",
    ["node_id"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
ORCHESTRATOR_NODE_SKIPPED = Counter(
    "mor_orchestrator_node_skipped_steps", "Scoring rounds a node sat out because it was marked unhealthy.",
    ["node_id"], registry=REGISTRY,
)
ORCHESTRATOR_NODE_HEALTHY = Gauge(
    "mor_orchestrator_node_healthy_ratio", "1 while the fan-out counts a node healthy, 0 while it is skipped.",
    ["node_id"], registry=REGISTRY,
)
ORCHESTRATOR_QUORUM_FAILURES = Counter(
    "mor_orchestrator_quorum_failed_steps", "Scoring rounds that ended with fewer answering nodes than fanout.min_nodes.",
    registry=REGISTRY,
)
ORCHESTRATOR_NODE_CALIBRATION_MEAN = Gauge(
    "mor_orchestrator_node_calibration_mean_score", "Running mean of a node's raw scores that its z-scores subtract.",
    ["node_id"], registry=REGISTRY,
)
ORCHESTRATOR_NODE_CALIBRATION_STD = Gauge(
    "mor_orchestrator_node_calibration_std_score", "Running standard deviation of a node's raw scores that its z-scores divide by.",
    ["node_id"], registry=REGISTRY,
)
ORCHESTRATOR_ROUTER_ACCURACY = Gauge(
    "mor_orchestrator_router_heldout_accuracy_ratio", "Pair accuracy of the trained router on held-out router pairs.",
    registry=REGISTRY,
)
ORCHESTRATOR_STEPS = Counter(
    "mor_orchestrator_grpo_steps", "GRPO steps completed.", registry=REGISTRY,
)
ORCHESTRATOR_REWARD_MEAN = Gauge(
    "mor_orchestrator_reward_mean_score", "Mean total reward of the latest step.", registry=REGISTRY,
)
ORCHESTRATOR_LOSS = Gauge(
    "mor_orchestrator_grpo_loss_value", "GRPO loss of the latest step.", registry=REGISTRY,
)
ORCHESTRATOR_KL = Gauge(
    "mor_orchestrator_grpo_kl_nats", "Mean k3 KL to the reference policy in the latest step.", registry=REGISTRY,
)
ORCHESTRATOR_CLIP_LOW = Gauge(
    "mor_orchestrator_grpo_clip_low_ratio", "Fraction of tokens clipped below 1 - epsilon_low.", registry=REGISTRY,
)
ORCHESTRATOR_CLIP_HIGH = Gauge(
    "mor_orchestrator_grpo_clip_high_ratio", "Fraction of tokens clipped above 1 + epsilon_high.", registry=REGISTRY,
)
ORCHESTRATOR_ZERO_STD_GROUPS = Gauge(
    "mor_orchestrator_grpo_zero_std_groups_ratio", "Fraction of groups whose rewards had zero std.",
    registry=REGISTRY,
)
ORCHESTRATOR_PHASE_LATENCY = Histogram(
    "mor_orchestrator_step_phase_seconds", "Time of each phase of a step (generate, score, fuse, train, push).",
    ["phase"], buckets=PHASE_BUCKETS, registry=REGISTRY,
)


# --- side HTTP server ------------------------------------------------------------------------

_MAX_HEADER_BYTES = 16 * 1024
_READ_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class MetricsServer:
    """The running side HTTP server. `port` is the bound port; `await stop()` closes it."""

    def __init__(self, server: asyncio.base_events.Server, ready: Callable[[], bool], registry: CollectorRegistry):
        self._server = server
        self._ready = ready
        self._registry = registry

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def serving(self) -> bool:
        return self._server.is_serving()

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _is_ready(self) -> bool:
        try:
            return bool(self._ready())
        except Exception:  # a broken readiness check means "not ready", never a crashed probe
            log.exception("readiness check raised; reporting not ready")
            return False

    def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/livez":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            if self._is_ready():
                return 200, "text/plain; charset=utf-8", b"ready\n"
            return 503, "text/plain; charset=utf-8", b"not ready\n"
        return 404, "text/plain; charset=utf-8", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain; charset=utf-8", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self._respond(method, parts[1])
            header = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(header if method == "HEAD" else header + body)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def start_metrics_server(
    section: MetricsSection,
    ready: Callable[[], bool],
    *,
    registry: CollectorRegistry = REGISTRY,
) -> tuple[MetricsServer | None, int | None]:
    """Start the /metrics, /livez, /readyz server on the running loop; returns (server, port).

    Port 0 in the section picks a free port, returned here. When `section.enabled` is false,
    nothing is started and (None, None) is returned. Stop it with `await server.stop()`.
    """
    if not section.enabled:
        return None, None
    holder: list[MetricsServer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await holder[0]._handle(reader, writer)

    try:
        server = await asyncio.start_server(handle, section.host, section.port, limit=_MAX_HEADER_BYTES)
    except OSError as exc:
        raise ConfigError(f"metrics.port: cannot listen on {section.host}:{section.port}: {exc.strerror}") from None
    holder.append(MetricsServer(server, ready, registry))
    log.info("metrics on http://%s:%d/metrics", section.host, holder[0].port)
    return holder[0], holder[0].port


__all__ = [
    "ALLOWED_LABELS",
    "REGISTRY",
    "SERVICES",
    "STANDARD_PREFIXES",
    "UNITS",
    "MetricsServer",
    "start_metrics_server",
] + sorted(name for name, value in globals().items() if isinstance(value, Counter | Gauge | Histogram))
