from __future__ import annotations

import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_iot.deploy.pki import create_node_keys, create_server_certificates, main


def test_the_superlink_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    made = create_server_certificates(tmp_path, hosts=("127.0.0.1", "link.example.org"))
    ca = x509.load_pem_x509_certificate(made.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(made.certificate.read_bytes())

    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(made.private_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()
    assert stat.S_IMODE(made.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_node_keys_are_openssh_ec_keys_on_a_nist_curve(tmp_path):
    keys = create_node_keys(tmp_path, "supernode-0")
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(keys.public_key.read_bytes())

    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert private.public_key() == public
    assert keys.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600


def test_the_command_writes_a_ca_and_one_key_pair_per_node(tmp_path, capsys):
    main(["--out", str(tmp_path), "--host", "10.0.0.5", "--nodes", "2"])

    assert (tmp_path / "ca.crt").exists() and (tmp_path / "server.pem").exists()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "supernode-0",
        "supernode-0.pub",
        "supernode-1",
        "supernode-1.pub",
    ]
    assert "SuperNode 1:" in capsys.readouterr().out
