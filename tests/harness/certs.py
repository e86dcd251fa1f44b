"""A throwaway CA and a server certificate for 127.0.0.1/localhost, for TLS backends."""

import datetime
import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@attrs.frozen
class ServerCert:
    caFile: Path
    certFile: Path
    keyFile: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def makeServerCert(directory: Path, hostnames=("localhost",), ips=("127.0.0.1",)) -> ServerCert:
    """Write ca.pem, server.crt and server.key (0600) into C{directory}."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("sealgate test CA"))
          .issuer_name(_name("sealgate test CA")).public_key(caKey.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(caKey, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(i))
                                                  for i in ips]
    cert = (x509.CertificateBuilder().subject_name(_name(hostnames[0] if hostnames else ips[0]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(caKey, hashes.SHA256()))
    paths = ServerCert(directory / "ca.pem", directory / "server.crt", directory / "server.key")
    paths.caFile.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.certFile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.keyFile.touch(mode=0o600)
    paths.keyFile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return paths
