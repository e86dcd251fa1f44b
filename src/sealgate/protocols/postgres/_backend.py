"""The backend leg: logs in to PostgreSQL with the stored credential, then relays."""

import hashlib

import scramp
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from sealgate import noDelay
from sealgate.protocols.postgres import _wire as w


class BackendLoginFailed(Exception):
    """
    The backend refused or broke the login.  C{str(exc)} is safe for the
    client; C{code} is the SQLSTATE to send.
    """

    def __init__(self, message: str, code: str = "08006"):
        super().__init__(message)
        self.code = code


def md5Password(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


class BackendLeg(Protocol):
    """
    One connection to the real server on behalf of a client leg.

    During login it answers the server's authentication requests itself
    (SCRAM-SHA-256 via scramp, md5, cleartext, trust) and hands what the
    client should see to the client leg; once the server is ready, every
    byte goes straight to L{ClientLeg.fromBackend}.
    """

    _log = Logger()

    def __init__(self, client, options, params: tuple, tlsOptions=None):
        self.client = client
        self.options = options
        self.params = params
        self.tlsOptions = tlsOptions
        self.reader = w.Reader(frontend=False)
        self.ready = False
        self.pid = self.key = None
        self._scram = None
        self._authenticated = False

    def connectionMade(self):
        noDelay(self.transport)
        self.client.backendConnected(self)
        if self.options.backend_tls != "disable":
            self.reader.expectSSLAnswer()
            self.transport.write(w.SSLRequest().encode())
        else:
            self._sendStartup()

    def _sendStartup(self):
        self.transport.write(w.StartupMessage(self.params).encode())

    def dataReceived(self, data):
        if self.ready:
            self.client.fromBackend(data)
            return
        self.reader.receive_data(data)
        try:
            while not self.ready:
                ev = self.reader.next_event()
                if ev is w.NEED_DATA:
                    return
                self._login(ev)
        except BackendLoginFailed as e:
            self._fail(e)
            return
        except w.ProtocolError as e:
            self._fail(BackendLoginFailed(f"the backend sent a malformed message ({e})", "08P01"))
            return
        except Exception:
            self._log.failure("Backend login error")
            self._fail(BackendLoginFailed("the backend login failed", "08006"))
            return
        rest = self.reader.pending()
        self.reader.clear()
        if rest:
            self.client.fromBackend(rest)

    def _fail(self, err: BackendLoginFailed):
        self.ready = False
        self.client.backendFailed(err)
        assert self.transport is not None  # only called from dataReceived
        self.transport.loseConnection()

    def _login(self, ev):
        if isinstance(ev, w.SSLAnswer):
            if not ev.accepted:
                raise BackendLoginFailed("the backend does not accept TLS but the connection "
                                         "requires it (backend_tls)", "08001")
            self.transport.startTLS(self.tlsOptions)
            self._sendStartup()
            return
        t = ev.type
        if t == ord("R"):
            self._auth(w.decodeFrame(ev, False))
        elif t == ord("E"):
            err = w.decodeFrame(ev, False)
            raise BackendLoginFailed(
                f"the backend refused the login: {err.get('M', 'error')}", err.get("C", "08006"))
        elif t == ord("K"):
            k = w.decodeFrame(ev, False)
            self.pid, self.key = k.pid, k.key
        elif t == ord("Z"):
            self.ready = True
            self.client.backendReady(ev.raw)
        elif t in (ord("S"), ord("N")):
            self.client.backendStartupMessage(ev.raw)
        elif t == ord("v"):
            pass  # we ask for 3.0 only; the server just lists what it ignored
        else:
            raise BackendLoginFailed(f"unexpected message {chr(t)!r} during the backend login", "08P01")

    def _auth(self, msg):
        user = self.options.username
        pw = self.options.password
        code = msg.code
        if code == w.AUTH_OK:
            if self._scram is not None and not self._authenticated:
                raise BackendLoginFailed("the backend skipped SCRAM verification", "28000")
            self.client.backendAuthenticated()
            return
        if pw is None:
            raise BackendLoginFailed("the backend asks for a password but none is configured "
                                     "(password_env / password_file)", "28000")
        if code == w.AUTH_CLEARTEXT:
            self._send(w.PasswordMessage.cleartext(pw))
        elif code == w.AUTH_MD5:
            if len(msg.payload) != 4:
                raise BackendLoginFailed("bad md5 salt from the backend", "08P01")
            self._send(w.PasswordMessage.cleartext(md5Password(user, pw, msg.payload)))
        elif code == w.AUTH_SASL:
            mechs = msg.mechanisms()
            if "SCRAM-SHA-256" not in mechs:
                raise BackendLoginFailed(f"the backend offers no supported SASL mechanism ({mechs})",
                                         "28000")
            self._scram = scramp.ScramClient(["SCRAM-SHA-256"], user, pw)
            first = self._scram.get_client_first().encode()
            self._send(w.PasswordMessage.saslInitial("SCRAM-SHA-256", first))
        elif code == w.AUTH_SASL_CONTINUE and self._scram is not None:
            try:
                self._scram.set_server_first(msg.payload.decode())
            except Exception:
                raise BackendLoginFailed("SCRAM exchange with the backend failed", "28000")
            self._send(w.PasswordMessage(self._scram.get_client_final().encode()))
        elif code == w.AUTH_SASL_FINAL and self._scram is not None:
            try:
                self._scram.set_server_final(msg.payload.decode())
            except Exception:
                raise BackendLoginFailed("the backend failed SCRAM server verification", "28000")
            self._authenticated = True
        else:
            raise BackendLoginFailed(f"the backend asks for an unsupported authentication "
                                     f"method (code {code})", "28000")

    def _send(self, msg):
        self.transport.write(msg.encode())

    def connectionLost(self, reason):
        self.client.backendLost(reason, self.ready)


class CancelSender(Protocol):
    """Sends one CancelRequest with the real backend key and hangs up."""

    def __init__(self, pid: int, key: int):
        self.pid = pid
        self.key = key

    def connectionMade(self):
        self.transport.write(w.CancelRequest(self.pid, self.key).encode())
        self.transport.loseConnection()
