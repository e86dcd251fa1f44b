"""The one TLS/PEM helper: certificate blocks, a server with its chain, a private CA as trust root (memory BIOs, no sockets)."""

import pytest
from twisted.internet import ssl
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer

from sealgate.tlsfiles import pemBlocks, serverOptions, trustRoot
from tests.harness.certs import makeServerCert


def test_pem_blocks_are_the_certificates_in_order_without_the_key(tmp_path):
    paths = makeServerCert(tmp_path)
    cert, ca, key = (p.read_bytes() for p in (paths.certFile, paths.caFile, paths.keyFile))
    blocks = pemBlocks(key + cert + b"\n" + ca)
    assert blocks == [cert.strip(), ca.strip()]
    assert pemBlocks(key) == []


def test_server_sends_its_chain_and_a_client_trusting_only_the_ca_verifies_it(tmp_path):
    paths = makeServerCert(tmp_path)
    chainFile = paths.certFile.read_bytes() + paths.caFile.read_bytes()
    server = serverOptions(chainFile, paths.keyFile.read_bytes())
    client = ssl.optionsForClientTLS("localhost", trustRoot=trustRoot(paths.caFile.read_bytes()))
    seen = []

    @implementer(IHandshakeListener)
    class Client(Protocol):
        def handshakeCompleted(self):
            # The chain as sent, leaf first (the leaf alone would verify too).
            seen.extend(x.get_subject().CN for x in self.transport._tlsConnection.get_peer_cert_chain())

    sf = TLSMemoryBIOFactory(server, False, Factory.forProtocol(Protocol))
    cf = TLSMemoryBIOFactory(client, True, Factory.forProtocol(Client))
    sp, cp, pump = iosim.connectedServerAndClient(lambda: sf.buildProtocol(None),
                                                  lambda: cf.buildProtocol(None))
    pump.flush()
    assert seen == ["localhost", "sealgate test CA"]
    assert not cp.disconnected


def test_a_client_trusting_another_ca_refuses_the_server(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = makeServerCert(tmp_path / "a"), makeServerCert(tmp_path / "b")
    server = serverOptions(a.certFile.read_bytes(), a.keyFile.read_bytes())
    client = ssl.optionsForClientTLS("localhost", trustRoot=trustRoot(b.caFile.read_bytes()))
    done = []

    @implementer(IHandshakeListener)
    class Client(Protocol):
        def handshakeCompleted(self):
            done.append(True)

    sf = TLSMemoryBIOFactory(server, False, Factory.forProtocol(Protocol))
    cf = TLSMemoryBIOFactory(client, True, Factory.forProtocol(Client))
    sp, cp, pump = iosim.connectedServerAndClient(lambda: sf.buildProtocol(None),
                                                  lambda: cf.buildProtocol(None))
    pump.flush()
    assert done == [] and cp.transport.disconnecting


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = makeServerCert(tmp_path / "a"), makeServerCert(tmp_path / "b")
    with pytest.raises(VerifyError, match="do not match"):
        serverOptions(a.certFile.read_bytes(), b.keyFile.read_bytes()).getContext()
    with pytest.raises(ValueError):
        serverOptions(a.keyFile.read_bytes(), a.keyFile.read_bytes())
