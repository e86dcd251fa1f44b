"""A webhook receiver for notification tests: records every POST, answers with queued codes."""

from twisted.web import resource


class Receiver(resource.Resource):
    """Records every POST; answers with the status codes queued for its path, then 200."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.got = []
        self.codes: dict[str, list] = {}

    def render_POST(self, request):
        self.got.append((request.path.decode(), {k.decode().lower(): v[0].decode() for k, v in
                                                 request.requestHeaders.getAllRawHeaders()},
                         request.content.read()))
        queued = self.codes.get(request.path.decode())
        request.setResponseCode(queued.pop(0) if queued else 200)
        return b"ok"
