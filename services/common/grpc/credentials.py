"""Transport credentials and channel options from config sections.

TLS is the default. Plaintext happens only when `tls.insecure` is true, and then a loud warning is
logged, once per server or channel. Every PEM file is read and parsed here, at start-up, so a wrong
path or a file of the wrong kind fails with an error naming the config field rather than with a
TLS handshake error at the first call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.config import ConfigError, TLSSection

log = logging.getLogger(__name__)

# Keepalive: clients ping an idle connection every 30 s so dead peers (a node that vanished
# behind a NAT) are found before the next step's deadline; servers accept pings that often.
CLIENT_KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
SERVER_MIN_PING_INTERVAL_MS = 10_000

INSECURE_WARNING = (
    "!!! INSECURE %s: tls.insecure is true, so gRPC traffic%s is PLAINTEXT (unencrypted, "
    "unauthenticated peer). Use this only for local demos and tests. !!!"
)


def _read_pem(path: Path, field: str, kind: Literal["cert", "key"]) -> bytes:
    """Read a PEM file and check it holds what `field` promises; errors name `field`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{field}: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None
    try:
        if kind == "cert":
            x509.load_pem_x509_certificates(data)
        else:
            serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        what = "PEM certificate(s)" if kind == "cert" else "unencrypted PEM private key"
        raise ConfigError(f"{field}: {path} is not a valid {what} ({exc})") from None
    return data


def _check_pair(cert_pem: bytes, key_pem: bytes, prefix: str) -> None:
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    key = serialization.load_pem_private_key(key_pem, password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise ConfigError(f"{prefix}key does not belong to {prefix}cert")


def warn_insecure(what: str, target: str = "") -> None:
    """Log the loud plaintext warning for a server or channel."""
    log.warning(INSECURE_WARNING, what, f" to/from {target}" if target else "")


def server_credentials(tls: TLSSection, *, prefix: str = "tls.") -> grpc.ServerCredentials | None:
    """TLS (or mTLS when tls.require_client_auth) server credentials; None means plaintext.

    Without require_client_auth, a given ca_cert still asks clients for a certificate but does
    not insist on one.
    """
    if tls.insecure:
        warn_insecure("server")
        return None
    tls.check_files("server")
    assert tls.cert is not None and tls.key is not None  # check_files guarantees both for a server
    cert = _read_pem(tls.cert, f"{prefix}cert", "cert")
    key = _read_pem(tls.key, f"{prefix}key", "key")
    _check_pair(cert, key, prefix)
    root = _read_pem(tls.ca_cert, f"{prefix}ca_cert", "cert") if tls.ca_cert is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=tls.require_client_auth
    )


def channel_credentials(tls: TLSSection, *, prefix: str = "tls.") -> grpc.ChannelCredentials | None:
    """TLS channel credentials (mTLS when cert and key are given); None means plaintext.

    Without ca_cert the system trust store verifies the server.
    """
    if tls.insecure:
        return None
    tls.check_files("client")
    root = _read_pem(tls.ca_cert, f"{prefix}ca_cert", "cert") if tls.ca_cert is not None else None
    cert = key = None
    if tls.cert is not None and tls.key is not None:
        cert = _read_pem(tls.cert, f"{prefix}cert", "cert")
        key = _read_pem(tls.key, f"{prefix}key", "key")
        _check_pair(cert, key, prefix)
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


def message_size_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Send and receive limits; set on both ends (images and weight chunks are large)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of a grpc.aio server: message sizes, the keepalive pings it tolerates, and no
    SO_REUSEPORT (with it, a second server on a busy port would bind silently and share traffic)."""
    return message_size_options(max_message_bytes) + [
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 2 * CLIENT_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel_options(max_message_bytes: int, *, server_name: str | None = None) -> list[tuple[str, Any]]:
    """Options of a client channel: message sizes, keepalive, and an optional TLS name override
    (when the address is not among the server certificate's SANs)."""
    opts: list[tuple[str, Any]] = message_size_options(max_message_bytes) + [
        ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        # Each channel owns its subchannels: otherwise a closed channel's subchannel to a peer that
        # was down (with its reconnect back-off) is shared with a new channel to the restarted peer.
        ("grpc.use_local_subchannel_pool", 1),
        # A target naming several replicas (dns:/// of a headless Service, an ipv4: list) gets calls
        # spread over all of them; gRPC's default pick_first would send everything to the first.
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


__all__ = [
    "channel_credentials",
    "channel_options",
    "message_size_options",
    "server_credentials",
    "server_options",
    "warn_insecure",
]
