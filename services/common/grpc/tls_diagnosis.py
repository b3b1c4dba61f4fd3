"""Why a TLS connection failed, said from the client's side: who refused whom, and why.

gRPC reports most TLS failures to the client as UNAVAILABLE with a transport detail. Some name the
cause (CERTIFICATE_VERIFY_FAILED: this client refused the server's certificate; "Hostname
Verification Check failed"; WRONG_VERSION_NUMBER: a TLS client met a plaintext server). When the
*server* refuses the client (no client certificate, or one it does not trust) the client only sees
"Socket closed": the reason is in the server's log. For that case `diagnose` repeats the handshake
with Python's ssl module and the same files (ALPN h2, like gRPC): a handshake that completes and is
then closed at once means the server refused this client after seeing its certificate (or its lack
of one), and local checks of the client certificate (issuer, validity, key usage) say what is
probably wrong with it. A plaintext client that meets "Socket closed" is told when the server
speaks TLS.

`diagnose` blocks for at most about `timeout_s` (one probe connection); `describe_rpc_error` and
`adescribe_rpc_error` (which runs the probe on a worker thread) give the one-line message a CLI
prints. Nothing here raises: a diagnosis that cannot be made is None, and the gRPC detail stands.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import re
import socket
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.config import TLSSection

MAX_DETAIL_CHARS = 300
_CLOSED_MARKERS = ("socket closed", "connection reset", "end of file", "broken pipe", "connection aborted")


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _after(details: str, marker: str) -> str:
    """The text after `marker` up to the next ':' (the OpenSSL reason), stripped."""
    rest = details.split(marker, 1)[1] if marker in details else ""
    return rest.strip(" :").split(":", 1)[0].strip()


def _name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={cns[0].value}" if cns else cert.subject.rfc4514_string() or "(no subject)"


def _issuer(cert: x509.Certificate) -> str:
    cns = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={cns[0].value}" if cns else cert.issuer.rfc4514_string()


def _server_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in (*san.get_values_for_type(x509.DNSName), *san.get_values_for_type(x509.IPAddress))]


def _client_cert_findings(tls: TLSSection) -> str:
    """What is visibly wrong with this client's certificate, else where to look."""
    try:
        cert = x509.load_pem_x509_certificates(Path(tls.cert).read_bytes())[0]  # type: ignore[arg-type]
    except (OSError, ValueError):
        return "the server did not accept tls.cert; its log says why"
    who = f"{_name(cert)}, issued by {_issuer(cert)}"
    now = _dt.datetime.now(_dt.timezone.utc)
    if cert.not_valid_after_utc < now:
        return f"this client's certificate ({who}) expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now:
        return f"this client's certificate ({who}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            return (f"this client's certificate ({who}) is not valid for client authentication "
                    "(no clientAuth extended key usage; `mor certs issue NAME --client` makes one)")
    except x509.ExtensionNotFound:
        pass
    if tls.ca_cert is not None:
        try:
            cas = x509.load_pem_x509_certificates(Path(tls.ca_cert).read_bytes())
        except (OSError, ValueError):
            cas = []
        if cas and not any(_signed_by(cert, ca) for ca in cas):
            return (f"this client's certificate ({who}) is not signed by tls.ca_cert, the CA that vouches for "
                    "the server: most likely the server does not trust its issuer either")
    return f"it does not trust this client's certificate ({who}) or its issuer; the server's log says why"


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _context(tls: TLSSection, verify: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2"])
    if verify and tls.ca_cert is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_cert))
    elif verify:
        ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if verify and tls.cert is not None and tls.key is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


def _probe(address: str, tls: TLSSection, server_name: str | None, verify: bool,
           timeout_s: float) -> tuple[str, str | x509.Certificate | None]:
    """One handshake: ("accepted", None), ("closed", peer cert) when the server hung up right
    after the handshake, ("refused-by-client", reason), ("no-tls", None) or ("unreachable", None)."""
    hp = _host_port(address)
    if hp is None:
        return "unreachable", None
    host, port = hp
    try:
        ctx = _context(tls, verify)
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name or host) as conn:
                conn.settimeout(timeout_s)
                der = conn.getpeercert(binary_form=True)
                peer = x509.load_der_x509_certificate(der) if der else None
                try:
                    data = conn.recv(1)
                except (ConnectionResetError, ssl.SSLEOFError):
                    data = b""
                except TimeoutError:  # a server that waits for us has accepted us
                    data = b"."
                return ("accepted" if data else "closed"), peer
    except ssl.SSLCertVerificationError as exc:
        return "refused-by-client", exc.verify_message or str(exc)
    except ssl.SSLError as exc:
        if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return "no-tls", None
        return "closed", None
    except (OSError, ValueError):
        return "unreachable", None


def _fetch_server_cert(address: str, timeout_s: float) -> x509.Certificate | None:
    outcome, peer = _probe(address, TLSSection(), None, False, timeout_s)
    return peer if isinstance(peer, x509.Certificate) else None


def diagnose(address: str, tls: TLSSection, details: str, *, server_name: str | None = None,
             timeout_s: float = 2.0) -> str | None:
    """Which side refused the TLS connection to `address` and why, from gRPC's `details` and, when
    they only say the socket closed, one probe handshake; None when it cannot tell."""
    d = details or ""
    low = d.lower()
    host = server_name or (_host_port(address) or ("?", 0))[0]
    if "CERTIFICATE_VERIFY_FAILED" in d:
        why = _after(d, "CERTIFICATE_VERIFY_FAILED") or "verification failed"
        trust = f"tls.ca_cert ({tls.ca_cert})" if tls.ca_cert is not None else "the system trust store (tls.ca_cert is unset)"
        return f"this client refused the server's certificate: it does not verify against {trust} ({why})"
    if "hostname verification" in low:
        cert = _fetch_server_cert(address, timeout_s)
        names = ", ".join(_server_names(cert)) if cert is not None else "?"
        return (f"this client refused the server's certificate: it is not issued for {host!r} (it names: {names}); "
                "dial one of those names, or set the TLS server name to one")
    if "WRONG_VERSION_NUMBER" in d and not tls.insecure:
        return "the server does not speak TLS (a plaintext server?) while this client uses TLS; check tls.insecure on both sides"
    if not any(m in low for m in _CLOSED_MARKERS):
        return None
    if tls.insecure:
        outcome, _ = _probe(address, tls, server_name, False, timeout_s)
        if outcome in ("accepted", "closed"):
            return ("the server speaks TLS, but this client connects in plaintext (tls.insecure: true): "
                    "set tls.ca_cert (and tls.cert and tls.key for mutual TLS) instead")
        return None
    outcome, extra = _probe(address, tls, server_name, True, timeout_s)
    if outcome == "refused-by-client":
        return f"this client refused the server's certificate: {extra}"
    if outcome == "no-tls":
        return "the server does not speak TLS (a plaintext server?) while this client uses TLS"
    if outcome != "closed":
        return None
    if tls.cert is None:
        return ("the server refused this client: it requires a client certificate (mutual TLS) and none was "
                "sent; set tls.cert and tls.key")
    return f"the server refused this client's certificate: {_client_cert_findings(tls)}"


def _transport_detail(details: str) -> str:
    """gRPC's detail without the 'failed to connect to all addresses; last error: ...' wrapping."""
    tail = re.split(r"last error: ", details or "")[-1]
    return tail[:MAX_DETAIL_CHARS]


def describe_rpc_error(err: grpc.RpcError, address: str, tls: TLSSection, *, server_name: str | None = None,
                       timeout_s: float = 2.0) -> str:
    """'CODE: detail' for a failed call, with the TLS diagnosis in front of the raw detail when
    the call never got through the handshake (UNAVAILABLE)."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else str(err)) or ""
    name = getattr(code, "name", "UNKNOWN")
    why = None
    if code == grpc.StatusCode.UNAVAILABLE:
        try:
            why = diagnose(address, tls, details, server_name=server_name, timeout_s=timeout_s)
        except Exception:  # noqa: BLE001 - a diagnosis is a courtesy; never fail the report
            why = None
    if why is None:
        return f"{name}: {details[:2 * MAX_DETAIL_CHARS]}"
    return f"{name}: TLS handshake with {address} failed: {why} (gRPC: {_transport_detail(details)})"


async def adescribe_rpc_error(err: grpc.RpcError, address: str, tls: TLSSection, *,
                              server_name: str | None = None, timeout_s: float = 2.0) -> str:
    """describe_rpc_error with the probe on a worker thread, for code on an event loop."""
    return await asyncio.to_thread(describe_rpc_error, err, address, tls, server_name=server_name,
                                   timeout_s=timeout_s)


__all__ = ["adescribe_rpc_error", "describe_rpc_error", "diagnose"]
