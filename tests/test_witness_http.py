"""The witness's HTTP resources without sockets or threads (DummyRequest, an inline thread pool)."""

import io

from twisted.web.test.requesthelper import DummyRequest

from sealgate.recording.cosignature import SIZE_CONTENT_TYPE, Cosigner
from sealgate.witness.config import WitnessConfig
from sealgate.witness.resource import makeSite
from sealgate.witness.store import WitnessStore
from tests.test_witness import ORIGIN, Log


class InlinePool:
    def callInThreadWithCallback(self, onResult, f, *args, **kw):
        try:
            result = f(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - handed back as the Deferred's failure
            onResult(False, e)
        else:
            onResult(True, result)


class InlineReactor:
    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def _site(tmp_path, log):
    config = WitnessConfig(Cosigner.generate("w.test/1"), "tcp:0", tmp_path, {ORIGIN: (log.signer.verifier,)}, 4096)
    return makeSite(WitnessStore(tmp_path / "w.sqlite"), config, InlineReactor(), InlinePool())


def _call(site, method: bytes, path: bytes, body: bytes = b"", args=None):
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    request.content = io.BytesIO(body)
    request.args = args or {}
    resource = site.getResourceFor(request)
    out = resource.render(request)
    if isinstance(out, bytes):
        request.write(out)
    return request.responseCode or 200, request.responseHeaders.getRawHeaders(b"content-type", [b""])[0], \
        b"".join(request.written)


def test_add_checkpoint_answers_200_then_409_with_the_size(tmp_path):
    log = Log().grow(4)
    site = _site(tmp_path, log)
    code, _, body = _call(site, b"POST", b"/add-checkpoint", log.request(0).encode())
    assert code == 200 and body.startswith("\u2014 w.test/1 ".encode())
    code, ctype, body = _call(site, b"POST", b"/add-checkpoint", log.request(0).encode())
    assert (code, ctype, body) == (409, SIZE_CONTENT_TYPE.encode(), b"4\n")


def test_monitors_get_the_latest_cosigned_note(tmp_path):
    log = Log().grow(4)
    site = _site(tmp_path, log)
    assert _call(site, b"GET", b"/checkpoint", args={b"origin": [ORIGIN.encode()]})[0] == 404
    _call(site, b"POST", b"/add-checkpoint", log.request(0).encode())
    code, _, note = _call(site, b"GET", b"/checkpoint", args={b"origin": [ORIGIN.encode()]})
    assert code == 200 and note.decode().startswith(log.cp().text()) and note.count("\u2014".encode()) == 2


def test_a_get_on_add_checkpoint_is_405_and_a_huge_body_413(tmp_path):
    log = Log().grow(1)
    site = _site(tmp_path, log)
    assert _call(site, b"GET", b"/add-checkpoint")[0] == 405
    assert _call(site, b"POST", b"/add-checkpoint", b"old 0\n" + b"A" * 5000)[0] == 413
