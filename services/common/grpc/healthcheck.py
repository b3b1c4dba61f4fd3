"""A grpc.health.v1 probe for containers: exit 0 when the server answers SERVING, 1 otherwise.

    python -m services.common.grpc.healthcheck 127.0.0.1:50051 --insecure
    python -m services.common.grpc.healthcheck 10.0.0.7:50051 --ca-cert ca.pem --cert me.pem --key me.key
    python -m services.common.grpc.healthcheck --kind reward-node --config /etc/mor/config.yaml

With ``--kind``/``--config`` the probe reads the service's own settings file (MOR_<SERVICE>__…
environment overrides apply, exactly as for the service) and dials that server on loopback with the
same TLS section: ``tls.ca_cert`` verifies the server and the service's own certificate and key are
presented as the client certificate, so a server that demands mTLS accepts the probe when its
certificate was issued for client use too (``mor certs issue NAME --client``). The TLS host name is
taken from the server certificate's SANs when they do not cover the loopback address, so a
certificate made for ``clinic`` or ``rm.bank.example`` still verifies.

This is what the images' HEALTHCHECK and the Helm charts' exec probes run. Kubernetes' own gRPC
probe speaks plaintext only, so it cannot probe a TLS server; Docker has no gRPC probe at all.
Exit codes follow Docker's HEALTHCHECK contract: 0 healthy, 1 unhealthy (not serving, unreachable,
TLS refused, timeout); 3 means the probe itself is misconfigured (bad settings file or flags).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import CONFIG_KINDS, ConfigError, ServerSection, TLSSection, load_yaml
from services.common.grpc.credentials import channel_credentials, channel_options
from services.common.grpc.tls_diagnosis import describe_rpc_error

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1
EXIT_MISCONFIGURED = 3
SERVICE_KINDS = ("reward-node", "sampler", "orchestrator")
LOOPBACK_HOSTS = ("0.0.0.0", "::", "[::]", "", "127.0.0.1", "localhost")


def tls_name_for_loopback(cert_path: Path, host: str) -> str | None:
    """The name to verify the server certificate against when dialling ``host``: None when the
    certificate's SANs already cover ``host``, else its first DNS SAN (or its common name)."""
    cert = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        is_ip = bool(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        is_ip = False
    if (is_ip and host.strip("[]") in ips) or (not is_ip and host in dns):
        return None
    if dns:
        return dns[0]
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


def target_from_settings(kind: str, config: Path) -> tuple[str, TLSSection, ServerSection]:
    """(address on loopback, tls section, server section) of a service from its settings file."""
    if kind not in SERVICE_KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(SERVICE_KINDS)}, got {kind!r}")
    settings = load_yaml(CONFIG_KINDS[kind], config)
    server: ServerSection = settings.server
    if server.port == 0:
        raise ConfigError(f"{config}: server.port is 0 (a random port); a probe needs a fixed port")
    host = "127.0.0.1" if server.host in LOOPBACK_HOSTS else server.host
    return f"{host}:{server.port}", settings.tls, server


def check(
    address: str,
    tls: TLSSection,
    *,
    service: str = "",
    timeout_s: float = 3.0,
    server_name: str | None = None,
) -> tuple[int, str]:
    """Ask ``address`` for the health of ``service`` ("" = the whole server).

    Returns (exit code, one-line reason). Raises ConfigError for unreadable TLS files."""
    creds = channel_credentials(tls)
    host = address.rsplit(":", 1)[0]
    if creds is not None and server_name is None and tls.cert is not None:
        # The service's own certificate is the server's certificate when probing from inside.
        server_name = tls_name_for_loopback(tls.cert, host)
    options = channel_options(4 * 1024 * 1024, server_name=server_name)
    channel = (grpc.secure_channel(address, creds, options=options) if creds is not None
               else grpc.insecure_channel(address, options=options))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as err:
        return EXIT_UNHEALTHY, f"{address}: {describe_rpc_error(err, address, tls, server_name=server_name)}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    what = f"{address} {service or '(server)'}"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return EXIT_SERVING, f"{what}: SERVING"
    return EXIT_UNHEALTHY, f"{what}: {status}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.common.grpc.healthcheck",
        description="grpc.health.v1 probe: exit 0 when SERVING, 1 when not (Docker HEALTHCHECK contract).",
    )
    p.add_argument("address", nargs="?", help="host:port to probe (default: from --config).")
    p.add_argument("--kind", choices=SERVICE_KINDS, help="Service kind whose settings --config holds.")
    p.add_argument("--config", type=Path, help="The service's settings YAML (env overrides apply).")
    p.add_argument("--service", default="", help="Service name to ask about; empty = the whole server.")
    p.add_argument("--timeout", type=float, default=3.0, help="Deadline of the Check call in seconds.")
    p.add_argument("--insecure", action="store_true", help="Plaintext (when not using --config).")
    p.add_argument("--ca-cert", type=Path, help="PEM CA that verifies the server.")
    p.add_argument("--cert", type=Path, help="PEM client certificate (mTLS).")
    p.add_argument("--key", type=Path, help="PEM client key (mTLS).")
    p.add_argument("--server-name", help="TLS name to verify instead of the address' host.")
    p.add_argument("-q", "--quiet", action="store_true", help="Print nothing when healthy.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.config is not None or args.kind is not None:
            if args.config is None or args.kind is None:
                raise ConfigError("--kind and --config go together")
            if args.insecure or args.ca_cert or args.cert or args.key:
                raise ConfigError("with --config the TLS settings come from the file; drop --insecure/--ca-cert/--cert/--key")
            address, tls, _ = target_from_settings(args.kind, args.config)
            address = args.address or address
        else:
            if not args.address:
                raise ConfigError("give ADDRESS, or --kind and --config")
            address = args.address
            try:
                tls = TLSSection(insecure=args.insecure, ca_cert=args.ca_cert, cert=args.cert, key=args.key)
            except ValueError as exc:
                raise ConfigError(str(exc).splitlines()[-1].strip()) from None
        code, reason = check(address, tls, service=args.service, timeout_s=args.timeout,
                             server_name=args.server_name)
    except ConfigError as exc:
        print(f"healthcheck: error: {exc}", file=sys.stderr)
        return EXIT_MISCONFIGURED
    if code != EXIT_SERVING or not args.quiet:
        print(f"healthcheck: {reason}", file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
