"""The dev PKI (CA, server and client certificates) and bearer-token files."""

from __future__ import annotations

import ipaddress
import stat

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.common import certs


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_ca_writes_a_ca_with_a_private_key(tmp_path) -> None:
    paths = certs.init_ca(tmp_path / "pki")

    ca = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    assert (paths.cert.name, paths.key.name) == ("ca.pem", "ca.key")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert _mode(paths.key) == 0o600


def test_init_ca_is_idempotent_unless_overwritten(tmp_path) -> None:
    first = certs.init_ca(tmp_path).cert.read_bytes()

    again = certs.init_ca(tmp_path).cert.read_bytes()
    replaced = certs.init_ca(tmp_path, overwrite=True).cert.read_bytes()

    assert again == first
    assert replaced != first


def test_half_a_ca_is_an_error(tmp_path) -> None:
    certs.init_ca(tmp_path).key.unlink()

    with pytest.raises(certs.CertError, match="without its pair"):
        certs.init_ca(tmp_path)


def test_issued_server_cert_is_signed_by_the_ca_with_sans(tmp_path) -> None:
    ca_paths = certs.init_ca(tmp_path)

    paths = certs.issue(tmp_path, "clinic", sans=["127.0.0.1", "localhost", "clinic.internal"])

    ca = x509.load_pem_x509_certificate(ca_paths.cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "clinic.internal"]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "clinic"
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (paths.cert.name, paths.key.name, _mode(paths.key)) == ("clinic.pem", "clinic.key", 0o600)


def test_client_cert_is_valid_for_client_auth(tmp_path) -> None:
    certs.init_ca(tmp_path)

    paths = certs.issue(tmp_path, "orchestrator", client=True)

    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in list(usage)


def test_issue_without_ca_says_to_init_first(tmp_path) -> None:
    with pytest.raises(certs.CertError, match="mor certs init"):
        certs.issue(tmp_path, "clinic")


@pytest.mark.parametrize("name", ["../evil", "", ".hidden", "a/b", "ca"])
def test_names_that_are_not_safe_file_names_are_refused(tmp_path, name) -> None:
    certs.init_ca(tmp_path)

    with pytest.raises(certs.CertError):
        certs.issue(tmp_path, name)


def test_issue_token_writes_server_digest_and_client_token(tmp_path) -> None:
    token = certs.issue_token(tmp_path, "orchestrator", server="clinic")

    server_file = tmp_path / "clinic-tokens.yaml"
    client_file = tmp_path / "orchestrator-to-clinic.token"
    assert client_file.read_text() == token + "\n"
    assert token not in server_file.read_text()  # the server keeps only the digest
    assert certs.read_tokens(server_file) == {certs.token_digest(token): "orchestrator"}
    assert _mode(server_file) == _mode(client_file) == 0o600


def test_issue_token_without_server_uses_the_shared_files(tmp_path) -> None:
    token = certs.issue_token(tmp_path, "orchestrator")

    assert (tmp_path / "orchestrator.token").read_text().strip() == token
    assert certs.read_tokens(tmp_path / "tokens.yaml") == {certs.token_digest(token): "orchestrator"}


def test_tokens_accumulate_so_rotation_keeps_old_tokens_valid(tmp_path) -> None:
    old = certs.issue_token(tmp_path, "orchestrator", server="clinic")
    new = certs.issue_token(tmp_path, "orchestrator", server="clinic")
    other = certs.issue_token(tmp_path, "auditor", server="clinic")

    mapping = certs.read_tokens(tmp_path / "clinic-tokens.yaml")

    assert len({old, new, other}) == 3
    assert mapping == {
        certs.token_digest(old): "orchestrator",
        certs.token_digest(new): "orchestrator",
        certs.token_digest(other): "auditor",
    }
    assert (tmp_path / "auditor-to-clinic.token").read_text().strip() == other


def test_hand_written_plain_tokens_are_accepted(tmp_path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"plain-token": "orchestrator"}))

    assert certs.read_tokens(path) == {certs.token_digest("plain-token"): "orchestrator"}


@pytest.mark.parametrize("content", ["- a\n- b\n", "tok: ''\n", "{not yaml"])
def test_malformed_tokens_files_are_errors(tmp_path, content) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)

    with pytest.raises(certs.CertError):
        certs.read_tokens(path)
