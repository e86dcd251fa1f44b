"""Routing on one HTTP listener: which connection (and backend) serves a request, by Host and path prefix."""

import re


def endpointHostPort(description: str) -> tuple[str, int]:
    """Host and port named by a client endpoint string, for the Host header sent to the backend."""
    parts = re.split(r"(?<!\\):", description)
    kw = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    positional = [p for p in parts[1:] if "=" not in p]
    host = kw.get("host") or (positional[0] if positional else "localhost")
    port = kw.get("port") or (positional[1] if len(positional) > 1 else "80")
    return host.replace("\\:", ":"), int(port)


class Backend:
    """One connection as the listener sees it: its options and the Host its backend expects."""

    def __init__(self, connection):
        self.connection = connection
        self.options = connection.options
        self.host, self.port = endpointHostPort(connection.backend)
        self.hostHeader = self.host.encode() if self.port == 80 else f"{self.host}:{self.port}".encode()


class Router:
    """
    Picks the connection for a request by Host name, then by the longest
    path prefix.  It is given the normalized path (see L{_target}), so an
    encoded or dotted path cannot reach another connection's prefix.
    """

    def __init__(self, backends):
        # Most specific first: a host list beats none, a longer prefix beats a shorter.
        self._backends = sorted(
            backends, key=lambda b: (not b.options.hosts, -len(b.options.path_prefix or "")))
        # One connection taking every host and path: nothing to look at.
        only = self._backends[0] if len(self._backends) == 1 else None
        self._only = only if only is not None and not (
            only.options.hosts or only.options.path_prefix) else None

    def byName(self, name: str):
        return next((b for b in self._backends if b.connection.name == name), None)

    def route(self, host: bytes | None, path: bytes):
        """The backend for a Host value (port ignored) and a normalized path, or None."""
        if self._only is not None:
            return self._only
        name = (host or b"").decode("latin-1").lower()
        if name.startswith("["):
            name = name.split("]")[0] + "]"
        else:
            name = name.split(":")[0].rstrip(".")
        p = path.decode("latin-1")
        for b in self._backends:
            o = b.options
            if o.hosts and name not in o.hosts:
                continue
            if o.path_prefix and not (p == o.path_prefix or p.startswith(o.path_prefix + "/")
                                      or p.startswith(o.path_prefix + "?")):
                continue
            return b
        return None
