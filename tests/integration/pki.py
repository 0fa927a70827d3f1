"""A test PKI made in the fixture: a CA, server and client certificates, and a rogue pair
(TLS tests of the gRPC service and of the cap store's rediss:// connections)."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else name
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    ca_key, rogue_key = _key(), _key()
    ca = _cert("admatch test CA", ca_key, None, ca=True)
    server_key, client_key, bad_key, other_key = _key(), _key(), _key(), _key()
    out = {
        "ca": _pem(ca),
        "server_key": _pem(server_key),
        "server_cert": _pem(
            _cert("localhost", server_key, ("admatch test CA", ca_key), server=True)
        ),
        "client_key": _pem(client_key),
        "client_cert": _pem(_cert("ad-server", client_key, ("admatch test CA", ca_key))),
        "other_key": _pem(other_key),  # a good certificate of another identity
        "other_cert": _pem(_cert("reporting-job", other_key, ("admatch test CA", ca_key))),
        "rogue_key": _pem(bad_key),
        "rogue_cert": _pem(_cert("intruder", bad_key, ("rogue CA", rogue_key))),
    }
    directory = tmp_path_factory.mktemp("pki")
    for name, data in out.items():
        (directory / f"{name}.pem").write_bytes(data)
    out["dir"] = str(directory).encode()
    return out
