"""Certificates for the suite's TLS servers, made fresh by each fixture: a CA, a server certificate for
127.0.0.1 and localhost, and a client certificate, all PEM files signed by that CA."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka.abc import AbstractTokenProvider
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    # The server's key and certificate in one file, as Kafka's PEM keystore takes them.
    server_bundle: Path
    client_cert: Path
    client_key: Path


def make_pki(where: Path) -> Pki:
    where.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tripwire test CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, *, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = _builder(subject, ca_name, key.public_key(), now)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("localhost", server=True)
    client, client_key = leaf("tripwire-test-client", server=False)
    pki = Pki(
        ca=where / "ca.pem",
        server_cert=where / "server.pem",
        server_key=where / "server.key",
        server_bundle=where / "broker.pem",
        client_cert=where / "client.pem",
        client_key=where / "client.key",
    )
    pki.ca.write_bytes(_cert(ca))
    pki.server_cert.write_bytes(_cert(server))
    pki.server_key.write_bytes(_key(server_key))
    pki.server_bundle.write_bytes(_key(server_key) + _cert(server))
    pki.client_cert.write_bytes(_cert(client))
    pki.client_key.write_bytes(_key(client_key))
    return pki


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


SASL_USER = "tripwire"
SASL_PASSWORD = "sasl-test-secret-7f3a"
# A user that may do only what a Kafka ACL allows it (SASL_USER is a super user of the test broker).
AGENT_USER = "agent"
AGENT_PASSWORD = "agent-test-secret-2b9e"


class UnsecuredToken(AbstractTokenProvider):
    """An unsigned JWT (alg none) for the user, as Kafka's unsecured OAUTHBEARER validator takes: the test
    broker's stand-in for an identity provider (MSK IAM, an OIDC issuer)."""

    async def token(self) -> str:
        now = int(time.time())
        claims = {"sub": SASL_USER, "iat": now, "exp": now + 3600}
        return f"{_b64({'alg': 'none'})}.{_b64(claims)}."


def unsecured_token() -> UnsecuredToken:
    """The `token_provider` the suite names: `tests._tls:unsecured_token`."""
    return UnsecuredToken()


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def kafka_security(pki: Pki, mechanism: str, **changes: object) -> dict[str, object]:
    """The `kafka.security` settings for the test broker's SASL_SSL listener with this mechanism, a client
    certificate included; `changes` override any of them."""
    settings: dict[str, object] = {
        "protocol": "SASL_SSL",
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "sasl_mechanism": mechanism,
    }
    if mechanism == "OAUTHBEARER":
        settings["token_provider"] = "tests._tls:unsecured_token"
    else:
        settings |= {"username": SASL_USER, "password": SASL_PASSWORD}
        if changes.get("username") == AGENT_USER:
            settings["password"] = AGENT_PASSWORD
    return {**settings, **changes}
