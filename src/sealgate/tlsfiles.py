"""TLS material from PEM bytes, in one place: certificate blocks, a server's options with its chain, a trust root."""

from twisted.internet import ssl

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def pemBlocks(data: bytes) -> list[bytes]:
    """The certificates in a PEM file, in order (leaf first in a chain file); other blocks (a key) left out."""
    return [b[b.index(_BEGIN):] + _END for b in data.split(_END) if _BEGIN in b]


def serverOptions(certPEM: bytes, keyPEM: bytes,
                  acceptableProtocols: list[bytes] | None = None) -> ssl.CertificateOptions:
    """
    A TLS server's options: the leaf certificate of C{certPEM} with its
    private key, and every further certificate there sent as the chain.
    """
    blocks = pemBlocks(certPEM)
    if not blocks:
        raise ValueError("no certificate in the PEM data")
    cert = ssl.PrivateCertificate.loadPEM(keyPEM + b"\n" + blocks[0])
    chain = [ssl.Certificate.loadPEM(b).original for b in blocks[1:]]
    return ssl.CertificateOptions(privateKey=cert.privateKey.original, certificate=cert.original,
                                  extraCertChain=chain or None,
                                  acceptableProtocols=acceptableProtocols)


def trustRoot(caPEM: bytes):
    """A trust root of exactly the certificates in C{caPEM} (a private CA), for C{optionsForClientTLS}."""
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in pemBlocks(caPEM)])
