"""Twisted endpoint strings, read the one way sealgate reads them (no private Twisted API).

Twisted builds endpoints from these strings (C{serverFromString},
C{clientFromString}); sealgate only needs to read a few fields back: the
host and port a client endpoint connects to, and whether a server endpoint
listens on loopback only.  The grammar is Twisted's: fields are separated by
C{:}, a backslash escapes the next character, C{key=value} fields are
keywords, the others positional.
"""

import ipaddress
import re

_FIELD = re.compile(r"(?:\\.|[^:\\])*")


def split(description: str) -> tuple[str, list[str], dict[str, str]]:
    """C{"tcp:host=db:port=5432"} -> C{("tcp", [], {"host": "db", "port": "5432"})}."""
    fields = [m.group(0) for m in _FIELD.finditer(description)][::2]
    kind, rest = (fields[0].lower() if fields else ""), fields[1:]
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for field in rest:
        key, eq, value = field.partition("=")
        if eq and "\\" not in key:
            keywords[key] = _unescape(value)
        else:
            positional.append(_unescape(field))
    return kind, positional, keywords


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def hostPort(description: str, defaultPort: int | None = None) -> tuple[str, int | None]:
    """The host and port a client endpoint (C{tcp:}, C{tls:}, C{ssl:}) connects to."""
    _, positional, keywords = split(description)
    host = keywords.get("host") or (positional[0] if positional else "")
    port = keywords.get("port") or (positional[1] if len(positional) > 1 else None)
    return host, int(port) if port and port.isdigit() else defaultPort


def isLoopbackAddress(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listensOnLoopbackOnly(description: str) -> bool:
    """A server endpoint that only this host can reach: a UNIX socket, or TCP bound to loopback."""
    kind, _, keywords = split(description)
    if kind == "unix":
        return True
    return isLoopbackAddress(keywords.get("interface", ""))
