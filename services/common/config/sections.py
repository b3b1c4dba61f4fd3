"""Small config sections shared by the services. Each worker reads only its own slice."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.config.base import ConfigError, Section

MiB = 1024 * 1024


class ServerSection(Section):
    """Where and how a gRPC server listens."""

    host: str = Field("127.0.0.1", description="Interface to bind; loopback by default, 0.0.0.0 in containers.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free port at start-up (tests, local stack).")
    max_message_mb: int = Field(64, ge=1, le=2048, description="Max gRPC message size in MiB, set on both ends (images, weights).")
    grace_s: float = Field(10.0, ge=0, description="On SIGTERM: seconds in-flight requests get to finish before the server stops.")
    max_concurrent_rpcs: int = Field(256, ge=1, description="Concurrent RPCs admitted before the server answers RESOURCE_EXHAUSTED.")

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * MiB


class TLSSection(Section):
    """Transport security. TLS is the default; plaintext must be asked for with insecure: true."""

    insecure: bool = Field(False, description="Plaintext gRPC. Only for local demos and tests; logs a loud warning.")
    ca_cert: Path | None = Field(None, description="PEM CA bundle. On a server: verifies client certs (mTLS). On a client: verifies the server.")
    cert: Path | None = Field(None, description="PEM certificate of this endpoint.")
    key: Path | None = Field(None, description="PEM private key of this endpoint.")
    require_client_auth: bool = Field(False, description="Server side: demand a client certificate signed by ca_cert (mutual TLS).")

    @model_validator(mode="after")
    def _consistent(self) -> TLSSection:
        paths = {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key}
        if self.insecure:
            given = [k for k, v in paths.items() if v is not None]
            if given or self.require_client_auth:
                raise ValueError(f"insecure: true cannot be combined with {', '.join(given) or 'require_client_auth'}")
            return self
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        if self.require_client_auth and self.ca_cert is None:
            raise ValueError("require_client_auth needs ca_cert to verify client certificates")
        return self

    def check_files(self, role: Literal["server", "client"]) -> None:
        """Start-up check: every named file exists, and a TLS server has its certificate and key."""
        if self.insecure:
            return
        if role == "server" and self.cert is None:
            raise ConfigError("tls.cert and tls.key are required for a TLS server (or set tls.insecure: true)")
        for name in ("ca_cert", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"tls.{name}: file not found: {path}")


IDENTITY_PATTERN = r"^[A-Za-z0-9*][A-Za-z0-9_.@:\-]{0,127}$"
METHOD_PATTERN = r"^[A-Z][A-Za-z0-9_]{0,63}$"
ANY_CALLER = "*"


class AuthSection(Section):
    """Caller identity and per-method authorisation.

    Client side: the bearer token it presents. Server side: who the caller is and what it may call.
    The caller's identity comes from the bearer token (auth.tokens_file) and, under mutual TLS
    (tls.require_client_auth), from the verified client certificate (its common name, or its first
    DNS name with cert_identity: dns_san). When both are present they must name the same identity,
    else PERMISSION_DENIED: a certificate of one organisation cannot carry another's token. Each
    method is then allowed to the identities `methods` lists for it, or else to allowed_callers.
    Without any identity source (plaintext or TLS without client certificates, and no tokens file)
    every caller is accepted, with a warning; explicit allow-lists are then an error.
    """

    token: SecretStr | None = Field(None, description="Client side: bearer token sent as 'authorization: Bearer <token>'.")
    token_file: Path | None = Field(None, description="Client side: read the token from this file instead (kept out of config dumps).")
    tokens_file: Path | None = Field(
        None, description="Server side: YAML mapping token -> caller identity; empty means no token is required."
    )
    cert_identity: Literal["common_name", "dns_san"] = Field(
        "common_name",
        description="Server side, under mutual TLS: which name of the verified client certificate is the caller's identity "
                    "(common_name, as `mor certs issue NAME` writes it, or the first DNS subject alternative name).",
    )
    allowed_callers: tuple[str, ...] = Field(
        (), description="Server side: identities allowed to call every method that `methods` does not name; empty (or '*') "
                        "admits every authenticated identity. Others get PERMISSION_DENIED."
    )
    methods: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Server side: per-method allow-list, method name (e.g. UpdateWeights) -> identities allowed to call it "
                    "('*': every authenticated identity); overrides allowed_callers for that method.",
    )

    @model_validator(mode="after")
    def _one_token_source(self) -> AuthSection:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give either token or token_file, not both")
        for where, names in [("allowed_callers", self.allowed_callers),
                             *((f"methods.{m}", ids) for m, ids in self.methods.items())]:
            for name in names:
                if not re.fullmatch(IDENTITY_PATTERN, name):
                    raise ValueError(f"{where}: {name[:80]!r} is not an identity (must match {IDENTITY_PATTERN})")
        for method, ids in self.methods.items():
            if not re.fullmatch(METHOD_PATTERN, method):
                raise ValueError(f"methods: {method[:80]!r} is not a method name (e.g. UpdateWeights)")
            if not ids:
                raise ValueError(f"methods.{method}: empty; list the identities allowed, or '*' for every authenticated one")
        return self

    @property
    def restricts_callers(self) -> bool:
        """True when this config (not just the defaults of a service) names allow-lists."""
        return bool({"allowed_callers", "methods"} & self.model_fields_set)

    def callers_for(self, method: str) -> frozenset[str] | None:
        """Identities allowed to call `method` (its short name), or None for every authenticated one."""
        ids = self.methods.get(method, self.allowed_callers)
        return None if not ids or ANY_CALLER in ids else frozenset(ids)


ORCHESTRATOR_IDENTITY = "orchestrator"
OPERATOR_IDENTITY = "operator"


class RewardNodeAuthSection(AuthSection):
    """A reward node's auth: by default only the orchestrator may call it (Score, ScoreBatch, GetInfo)."""

    allowed_callers: tuple[str, ...] = Field(
        (ORCHESTRATOR_IDENTITY,),
        description="Identities allowed to call the node's methods that `methods` does not name (default: the orchestrator only).",
    )


class SamplerAuthSection(AuthSection):
    """The sampler's auth: by default only the orchestrator may generate with the policy or replace it;
    GetInfo is open to every authenticated identity."""

    methods: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {"Generate": (ORCHESTRATOR_IDENTITY,), "UpdateWeights": (ORCHESTRATOR_IDENTITY,)},
        description="Per-method allow-list (method -> identities, '*' = every authenticated identity); by default "
                    "Generate and UpdateWeights only for the orchestrator.",
    )


class OrchestratorAuthSection(AuthSection):
    """The Orchestrator API's auth. allowed_callers are the operators: run control (StartRun, GetRun,
    WatchRun, StopRun), ListNodes, and registering or removing any node. RegisterNode and RemoveNode
    are open (by `methods`) to every authenticated identity, but an identity that is not an operator
    may register, update and remove only the node whose node_id is its own identity."""

    allowed_callers: tuple[str, ...] = Field(
        (OPERATOR_IDENTITY,),
        description="Operator identities: run control, ListNodes and every node's registration. Others get PERMISSION_DENIED.",
    )
    methods: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {"RegisterNode": (ANY_CALLER,), "RemoveNode": (ANY_CALLER,)},
        description="Per-method allow-list (method -> identities, '*' = every authenticated identity); by default RegisterNode "
                    "and RemoveNode for every authenticated identity, each organisation limited to its own node_id.",
    )

    @property
    def operators(self) -> frozenset[str] | None:
        """Identities that may act on any node: allowed_callers (None when that is empty or '*',
        i.e. every authenticated identity is an operator)."""
        return None if not self.allowed_callers or ANY_CALLER in self.allowed_callers else frozenset(self.allowed_callers)


class MetricsSection(Section):
    """Prometheus metrics and /livez, /readyz on a side HTTP port."""

    enabled: bool = Field(True, description="Serve the metrics endpoint.")
    host: str = Field("127.0.0.1", description="Interface for the metrics HTTP server.")
    port: int = Field(0, ge=0, le=65535, description="Metrics HTTP port; 0 picks a free one.")


class LimitsSection(Section):
    """Input limits; a request beyond them is refused with INVALID_ARGUMENT naming the limit."""

    max_prompt_chars: int = Field(4096, ge=1, description="Longest accepted prompt, in characters.")
    max_response_chars: int = Field(4096, ge=1, description="Longest accepted response, in characters.")
    max_responses: int = Field(64, ge=1, description="Most responses (group size) in one Score request.")
    max_image_bytes: int = Field(4 * MiB, ge=1, description="Largest accepted encoded image.")
    image_mime_types: tuple[str, ...] = Field(("image/png", "image/jpeg"), description="Accepted image encodings.")
    max_batch_groups: int = Field(64, ge=1, description="Most groups in one batched call (the reward node's ScoreBatch).")
    max_image_pixels: int = Field(4096 * 4096, ge=1, le=4096 * 4096, description="Most pixels (width x height, read from the header before decoding) of one image.")
    max_request_pixels: int = Field(2 * 4096 * 4096, ge=1, description="Most pixels of all images of one request together, checked before any is decoded (about 3 bytes each once decoded).")
    max_image_aspect_ratio: float = Field(200.0, ge=1, description="Largest long side / short side of an image (Qwen2-VL's image processor refuses more than 200).")


class BatchingSection(Section):
    """Dynamic batching across concurrent requests (Triton-style)."""

    max_batch_size: int = Field(32, ge=1, description="Most samples run in one forward pass.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a partial batch waits for more work before it runs.")
    max_queue: int = Field(1024, ge=1, description="Samples waiting beyond this are refused with RESOURCE_EXHAUSTED.")
    max_queue_delay_ms: float | None = Field(100.0, gt=0, description="A call whose samples would wait longer than this before their batch starts (queued samples / the model's measured samples per second) is refused at once with RESOURCE_EXHAUSTED, so admitted calls stay fast under overload; null: bound by max_queue only. A call into an empty queue is always admitted.")
    max_pending_pixels: int = Field(4 * 4096 * 4096, ge=1, description="Image pixels all admitted calls may hold decoded at once (about 3 bytes each); a call whose images would pass it is refused with RESOURCE_EXHAUSTED before decoding.")


class EndpointSection(Section):
    """A gRPC peer this service calls."""

    address: str = Field(..., description="host:port of the peer, or a gRPC target naming several replicas: "
                         "dns:///host:port (every address the name resolves to, e.g. a headless Service) or "
                         "ipv4:h1:p1,h2:p2; calls are spread over the replicas round-robin.")
    tls: TLSSection = Field(default_factory=TLSSection, description="How to secure the channel.")
    auth: AuthSection = Field(default_factory=AuthSection, description="Token to present.")
    timeout_s: float = Field(30.0, gt=0, description="Per-call deadline in seconds.")

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host_port = r"[\w.\-\[\]:]+:\d{1,5}"
        if not (re.fullmatch(rf"(dns:(//[\w.\-:]*/)?)?{host_port}", v)
                or re.fullmatch(rf"(ipv4|ipv6):{host_port}(,{host_port})*", v)):
            raise ValueError("must be host:port, dns:///host:port or ipv4:host:port,host:port")
        return v


class NodeEndpoint(EndpointSection):
    """A reward node the orchestrator fans out to."""

    node_id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$", description="Stable id of the node (its organisation).")

    @classmethod
    def loopback(cls, node_id: str, port: int, timeout_s: float = 120.0) -> NodeEndpoint:
        """A plaintext node on 127.0.0.1 (the in-process nodes of experiments and benchmarks)."""
        return cls(node_id=node_id, address=f"127.0.0.1:{port}", tls=TLSSection(insecure=True), timeout_s=timeout_s)
