"""A development PKI and bearer tokens for MoR's gRPC services (`mor certs init|issue|token`).

Everything lives in one directory, with fixed file names so configs can point at them:

    ca.pem, ca.key                the dev CA (`init_ca`)
    <name>.pem, <name>.key        a certificate signed by the CA and its key (`issue`)
    tokens.yaml / <server>-tokens.yaml
                                  server side: sha256 digest of each token -> caller identity
    <caller>.token / <caller>-to-<server>.token
                                  client side: the token itself, one line

Private keys and token files are written with mode 0600, atomically (write then rename). Keys are
ECDSA P-256: small and fast, and accepted by every gRPC TLS stack. This is a dev/test PKI: a real
deployment brings certificates from its own CA and only needs the paths in TLSSection.

Servers keep only sha256 digests of tokens (`sha256:<hex>` keys), so a leaked tokens file does not
leak working tokens. A hand-written tokens file may also use plain tokens as keys; `read_tokens`
accepts both.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.config.base import ConfigError, read_yaml

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_SANS: tuple[str, ...] = ("127.0.0.1", "localhost")
DEFAULT_DAYS = 365
TOKEN_DIGEST_PREFIX = "sha256:"

# Names become file names and certificate CNs: no path separators, no leading dot.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


class CertError(ValueError):
    """A certificate or token operation that cannot be done; the message says what to fix."""


@dataclass(frozen=True)
class CertPaths:
    """Where a certificate and its private key were written."""

    cert: Path
    key: Path


def _check_name(name: str, what: str) -> str:
    if not _NAME_RE.match(name):
        raise CertError(f"{what} {name!r} must match {_NAME_RE.pattern} (it becomes a file name)")
    return name


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` with mode 0600, atomically: a reader never sees a half-written key."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _ensure_dir(directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(days: int) -> tuple[_dt.datetime, _dt.datetime]:
    if days < 1:
        raise CertError(f"days must be >= 1, got {days}")
    now = _dt.datetime.now(_dt.timezone.utc)
    # Back-date a little so a peer whose clock is slightly behind accepts a fresh certificate.
    return now - _dt.timedelta(minutes=5), now + _dt.timedelta(days=days)


def _san_entries(sans: Iterable[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for san in sans:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            entries.append(x509.DNSName(san))
    return entries


def ca_paths(directory: str | Path) -> CertPaths:
    """Paths of the CA certificate and key in `directory` (they may not exist yet)."""
    d = Path(directory)
    return CertPaths(cert=d / CA_CERT, key=d / CA_KEY)


def cert_paths(directory: str | Path, name: str) -> CertPaths:
    """Paths of `name`'s certificate and key in `directory` (they may not exist yet)."""
    d = Path(directory)
    _check_name(name, "certificate name")
    return CertPaths(cert=d / f"{name}.pem", key=d / f"{name}.key")


def init_ca(
    directory: str | Path,
    *,
    common_name: str = "MoR dev CA",
    days: int = 3650,
    overwrite: bool = False,
) -> CertPaths:
    """Create a self-signed dev CA (ca.pem, ca.key) in `directory`.

    Idempotent: when both files already exist and `overwrite` is false, they are kept and their
    paths returned (so `mor stack up` can call this every time). A lone ca.pem or ca.key is an
    error, since certificates issued from a half CA could not be verified.
    """
    d = _ensure_dir(directory)
    paths = ca_paths(d)
    if not overwrite:
        present = [p for p in (paths.cert, paths.key) if p.exists()]
        if len(present) == 2:
            return paths
        if present:
            raise CertError(f"{present[0]} exists without its pair; remove it or pass overwrite=True")
    key = _new_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MoR"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(paths.key, _key_pem(key))
    _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    paths = ca_paths(directory)
    if not (paths.cert.is_file() and paths.key.is_file()):
        raise CertError(f"no CA in {directory} (need {CA_CERT} and {CA_KEY}): run `mor certs init` first")
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{paths.key}: expected an EC private key")
    return cert, key


def issue(
    directory: str | Path,
    name: str,
    sans: Iterable[str] = DEFAULT_SANS,
    client: bool = False,
    *,
    days: int = DEFAULT_DAYS,
) -> CertPaths:
    """Issue `<name>.pem` / `<name>.key`, signed by the CA in `directory`; overwrites an older pair.

    `name` is the certificate's common name (the peer identity in mTLS). `sans` are the host names
    and IP addresses clients dial; each is written as an IP SAN when it parses as an address, else
    as a DNS SAN. A server certificate (client=False) is valid for serverAuth only; with client=True
    it is valid for clientAuth as well, so one certificate serves an entity that both calls and
    serves (the orchestrator).
    """
    d = Path(directory)
    paths = cert_paths(d, name)
    if name == "ca":
        raise CertError("'ca' is reserved for the CA's own files")
    ca_cert, ca_key = _load_ca(d)
    sans = list(sans)
    if not sans:
        raise CertError("at least one subject alternative name is needed (e.g. 127.0.0.1, localhost)")
    key = _new_key()
    not_before, not_after = _validity(days)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MoR"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.key, _key_pem(key))
    _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


# --- bearer tokens ---------------------------------------------------------------------------


def token_digest(token: str) -> str:
    """The form a server stores: 'sha256:<hex>' of the token."""
    return TOKEN_DIGEST_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def tokens_path(directory: str | Path, server: str | None = None) -> Path:
    """The server-side tokens file: `<server>-tokens.yaml`, or `tokens.yaml` without a server."""
    d = Path(directory)
    if server is None:
        return d / "tokens.yaml"
    return d / f"{_check_name(server, 'server name')}-tokens.yaml"


def token_path(directory: str | Path, caller: str, server: str | None = None) -> Path:
    """The client-side token file: `<caller>-to-<server>.token` (what `caller` presents to
    `server`), or `<caller>.token` without a server. Distinct per (caller, server), so issuing
    tokens for several callers of one server never overwrites another caller's file."""
    d = Path(directory)
    _check_name(caller, "caller")
    if server is None:
        return d / f"{caller}.token"
    return d / f"{caller}-to-{_check_name(server, 'server name')}.token"


def read_tokens(path: str | Path) -> dict[str, str]:
    """Load a server tokens file as {sha256 digest: caller}. Plain-token keys are digested here.

    Raises CertError when the file is missing or is not a mapping of non-empty strings.
    """
    p = Path(path)
    try:
        data = read_yaml(p, what="tokens file", mapping="a mapping token -> caller")
    except ConfigError as exc:
        raise CertError(str(exc)) from None
    out: dict[str, str] = {}
    for key, caller in data.items():
        if not isinstance(key, str) or not key or not isinstance(caller, str) or not caller:
            raise CertError(f"{p}: every entry must map a non-empty token to a non-empty caller")
        out[key if key.startswith(TOKEN_DIGEST_PREFIX) else token_digest(key)] = caller
    return out


def issue_token(
    directory: str | Path,
    caller: str,
    *,
    server: str | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
) -> str:
    """Make a bearer token for `caller` and return it.

    Adds its digest to the server's tokens file (`tokens_path(directory, server)`, created when
    missing; earlier tokens stay valid, so this also rotates) and writes the token itself to the
    client's file (`token_file`, by default `token_path(directory, caller, server)`). Both files
    get mode 0600. `token` lets tests pin the value; by default it is 32 random bytes, url-safe
    base64.
    """
    _check_name(caller, "caller")
    d = _ensure_dir(directory)
    value = token if token is not None else secrets.token_urlsafe(32)
    if not value or any(c.isspace() for c in value):
        raise CertError("a token must be non-empty and contain no whitespace")
    server_file = tokens_path(d, server)
    entries: dict[str, str] = {}
    if server_file.exists():
        entries = read_tokens(server_file)
    entries[token_digest(value)] = caller
    header = "# token digest -> caller identity; written by `mor certs token`\n"
    _write_private(server_file, (header + yaml.safe_dump(entries, sort_keys=True)).encode())
    client_file = Path(token_file) if token_file is not None else token_path(d, caller, server)
    _write_private(client_file, (value + "\n").encode())
    return value


__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_SANS",
    "CertError",
    "CertPaths",
    "ca_paths",
    "cert_paths",
    "init_ca",
    "issue",
    "issue_token",
    "read_tokens",
    "token_digest",
    "token_path",
    "tokens_path",
]
