"""Discovery of protocol and interceptor plugins through twisted.plugin."""

from twisted.logger import Logger

from sealgate.interfaces import IInterceptorPlugin, IProtocolPlugin

_log = Logger()


def _discover(interface):
    from twisted import plugin, plugins

    found = {}
    for p in plugin.getPlugins(interface, plugins):
        name = p.name
        if name in found:
            _log.debug("Plugin {name!r} found twice (installed and in the tree); keeping the first", name=name)
            continue
        found[name] = p
    return found


def protocolPlugins() -> dict:
    """All installed L{IProtocolPlugin}s by name."""
    return _discover(IProtocolPlugin)


def interceptorPlugins() -> list:
    """All installed L{IInterceptorPlugin}s, in chain order."""
    return sorted(_discover(IInterceptorPlugin).values(), key=lambda p: (p.order, p.name))


class _Lazy:
    """Provides an interface for a plugin whose module is imported on first use."""

    def __init__(self, name: str, module: str, attribute: str = "plugin", **attrs):
        self.name = name
        self._module = module
        self._attribute = attribute
        self._real = None
        for k, v in attrs.items():
            setattr(self, k, v)

    def _load(self):
        if self._real is None:
            import importlib

            self._real = getattr(importlib.import_module(self._module), self._attribute)
        return self._real

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._load(), name)


from twisted.plugin import IPlugin  # noqa: E402
from zope.interface import implementer  # noqa: E402


@implementer(IPlugin, IProtocolPlugin)
class LazyProtocolPlugin(_Lazy):
    """
    A protocol plugin named in a dropin file by module path, so
    C{twistd --help} never imports protocol code.
    """


@implementer(IPlugin, IInterceptorPlugin)
class LazyInterceptorPlugin(_Lazy):
    """An interceptor plugin named by module path; C{order} is given here."""

    def __init__(self, name: str, order: int, module: str, attribute: str = "plugin"):
        super().__init__(name, module, attribute, order=order)
