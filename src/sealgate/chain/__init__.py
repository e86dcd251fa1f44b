"""The interceptor chain shared by all protocols, and its built-in interceptors."""

from sealgate.chain._chain import Chain, SessionChain

__all__ = ["Chain", "SessionChain"]
