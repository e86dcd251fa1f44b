"""A bare Twisted byte forwarder (twisted.protocols.portforward): the floor the issues calibrate against.

Run: python bench/_forwarder.py LISTEN_PORT BACKEND_PORT   (127.0.0.1 on both sides)
It parses nothing and records nothing; the benchmarks run it beside
sealgate so each ratio can be read against what Twisted alone costs here.
"""

import sys

from twisted.internet import reactor
from twisted.protocols.portforward import ProxyFactory


def main() -> None:
    listen, backend = int(sys.argv[1]), int(sys.argv[2])
    reactor.listenTCP(listen, ProxyFactory("127.0.0.1", backend), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
