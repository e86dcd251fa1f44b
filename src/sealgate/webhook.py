"""Signed JSON POSTs that never block: ticket notifications and the audit event stream share them."""

import hashlib
import hmac
from io import BytesIO

from twisted.internet import defer, protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

SIGNATURE_HEADER = "X-Sealgate-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: C{sha256=<hex HMAC-SHA256 of the body>}."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def makeAgent(reactor, persistent: bool = False) -> Agent:
    """A twisted.web Agent with a connect timeout (no kept-alive sockets unless asked)."""
    return Agent(reactor, connectTimeout=10, pool=HTTPConnectionPool(reactor, persistent=persistent))


class _Discard(protocol.Protocol):
    def __init__(self, done):
        self.done = done

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)


def postJSON(agent, reactor, url: str, body: bytes, headers: dict, timeout: float) -> defer.Deferred:
    """
    POST C{body}; fires with None once a 2xx answer has been read, fails
    with the status (never the URL: a webhook URL may be a credential)
    or with a timeout after C{timeout} seconds.
    """
    try:
        d = agent.request(b"POST", url.encode(), Headers({k: [v] for k, v in headers.items()}),
                          FileBodyProducer(BytesIO(body)))
    except Exception as e:  # a malformed URL fails here, synchronously
        d = defer.fail(e)
    d.addTimeout(timeout, reactor)

    def answered(response):
        done: defer.Deferred = defer.Deferred()
        response.deliverBody(_Discard(done))
        if not 200 <= response.code < 300:
            raise RuntimeError(f"HTTP {response.code}")
        return done

    return d.addCallback(answered)
