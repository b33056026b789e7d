"""Mail over STARTTLS with a login (issue 12, finding 5), against aiosmtpd with TLS and AUTH."""
from __future__ import annotations

import datetime
import ipaddress
import ssl

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from local.emulators import free_port
from shared.adapters.notify import EmailNotifier, NotifyError
from tests.integration.test_notify_channels import Inbox


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def relay(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts this relay's certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[str] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"release-bot" and auth_data.password == b"s3cret"
        if ok:
            logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), tls_context=context,
                            require_starttls=True, authenticator=authenticator, auth_require_tls=True)
    controller.start()
    try:
        yield controller.port, inbox, logins
    finally:
        controller.stop()


def test_mail_goes_over_starttls_with_the_login(relay):
    port, inbox, logins = relay
    EmailNotifier("127.0.0.1", port, "release-bot@example.com", user="release-bot", password="s3cret").send(
        ["approver@example.com"], "Approve", "link")
    assert logins == ["release-bot"] and inbox.envelopes == [("release-bot@example.com", ["approver@example.com"])]


def test_a_wrong_password_is_a_notify_error_without_the_password(relay):
    port, _, _ = relay
    with pytest.raises(NotifyError) as caught:
        EmailNotifier("127.0.0.1", port, "release-bot@example.com", user="release-bot", password="wrong").send(
            ["a@example.com"], "s", "t")
    assert "wrong" not in str(caught.value)


def test_no_login_in_clear():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())  # a relay without STARTTLS
    controller.start()
    port = controller.port
    with pytest.raises(NotifyError, match="no STARTTLS"):
        try:
            EmailNotifier("127.0.0.1", port, "release-bot@example.com", user="u", password="p").send(
                ["a@x.com"], "s", "t")
        finally:
            controller.stop()
    assert inbox.messages == []
