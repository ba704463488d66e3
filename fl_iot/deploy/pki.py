"""The certificates and keys a Flower deployment with TLS and SuperNode authentication needs.

A private certificate authority signs the SuperLink's TLS certificate; every SuperNode and the
``flwr`` CLI verify the SuperLink against the CA's certificate (``--root-certificates``,
``root-certificates`` in ``$FLWR_HOME/config.toml``). Each SuperNode proves who it is with its
own key pair: the SuperLink (``--enable-supernode-auth``) admits only nodes whose public key was
registered (``flwr supernode register``). Flower 1.42 accepts only OpenSSH-format EC keys on a NIST
curve for nodes, so node keys are ECDSA P-384 in OpenSSH format.

Everything is generated with ``cryptography`` (a Flower dependency), so a deployment needs no
``openssl`` binary. Private keys are written readable by their owner only. For real machines::

    python -m fl_iot.deploy.pki --out pki --host superlink.example.org --host 10.0.0.5 --nodes 3

writes ``pki/ca.crt`` (to every SuperNode and ``flwr`` CLI host), ``pki/server.pem`` and
``pki/server.key`` (to the SuperLink host; ``pki/ca.key`` stays offline) and
``pki/keys/supernode-<i>`` with its ``.pub`` (the private key to node ``i``, the public key to
``flwr supernode register``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
"""How long the generated CA and SuperLink certificates stay valid."""


@dataclass(frozen=True)
class ServerCertificates:
    """The CA's certificate and the SuperLink's certificate and key, as PEM files."""

    ca_certificate: Path
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """One SuperNode's authentication key pair, OpenSSH format."""

    private_key: Path
    public_key: Path


def create_server_certificates(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")
) -> ServerCertificates:
    """Create a CA and a SuperLink certificate it signs, valid for ``hosts``.

    ``hosts`` are the names and IP addresses SuperNodes and the CLI use to reach the SuperLink;
    each becomes a subject alternative name (TLS checks the address against them).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-iot deployment CA")])
    ca_certificate = (
        _validity(x509.CertificateBuilder(), now)
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_certificate = (
        _validity(x509.CertificateBuilder(), now)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certificates = ServerCertificates(
        ca_certificate=directory / "ca.crt",
        certificate=directory / "server.pem",
        private_key=directory / "server.key",
    )
    _write_private(directory / "ca.key", _pem_private_key(ca_key))
    certificates.ca_certificate.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    certificates.certificate.write_bytes(
        server_certificate.public_bytes(serialization.Encoding.PEM)
    )
    _write_private(certificates.private_key, _pem_private_key(server_key))
    return certificates


def create_node_keys(directory: Path, name: str) -> NodeKeys:
    """Create a SuperNode's key pair: ``<name>`` (private) and ``<name>.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(private_key=directory / name, public_key=directory / f"{name}.pub")
    _write_private(
        keys.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    keys.public_key.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return keys


def _validity(builder: x509.CertificateBuilder, now: datetime.datetime) -> x509.CertificateBuilder:
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, content: bytes) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fl_iot.deploy.pki``: a CA, a SuperLink certificate and node key pairs."""
    parser = argparse.ArgumentParser(
        prog="python -m fl_iot.deploy.pki",
        description="Create the CA, SuperLink certificate and SuperNode keys of a deployment.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write them to")
    parser.add_argument(
        "--host",
        action="append",
        required=True,
        help="a name or IP address SuperNodes use to reach the SuperLink (repeatable)",
    )
    parser.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to create")
    args = parser.parse_args(argv)
    if args.nodes < 0:
        parser.error(f"--nodes must be at least 0, got {args.nodes}")
    certificates = create_server_certificates(args.out, hosts=args.host)
    print(f"CA certificate {certificates.ca_certificate}; SuperLink {certificates.certificate}")
    for index in range(args.nodes):
        keys = create_node_keys(args.out / "keys", f"supernode-{index}")
        print(f"SuperNode {index}: {keys.private_key} (public {keys.public_key})")


if __name__ == "__main__":
    main()
