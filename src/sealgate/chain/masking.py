"""The built-in masking interceptor: redacts what sessions send to their clients."""

import fnmatch
import re

from twisted.logger import Logger
from zope.interface import classImplements, implementer

from sealgate.chain.verdicts import Rewrite
from sealgate.interfaces import IInterceptorPlugin, IMasker, IOutputHook
from sealgate.masking import Masker, buildMasker

# The engine is the masking package's; that it is the published IMasker is
# the plugin contract's to say.
classImplements(Masker, IMasker)


@implementer(IOutputHook)
class MaskingInterceptor:
    """
    Masks output for the sessions C{[masking]} covers.

    Protocols with typed values (SQL columns, JSON bodies, terminal
    streams) use the shared L{Masker} directly through
    C{session.chain.masker} (L{maskerFor}); the L{output} hook masks
    whatever else a protocol sends through C{chain.output}.
    """

    name = "masking"
    _log = Logger()

    def __init__(self, masker: Masker, connections=("*",), exemptGroups=()):
        self.masker = masker
        self._connections = (re.compile("|".join(fnmatch.translate(c) for c in connections))
                             if connections else None)
        self._exempt = frozenset(exemptGroups)

    def appliesTo(self, session) -> bool:
        name = getattr(session.connection, "name", None)
        if self._connections is None or name is None or not self._connections.match(name):
            return False
        groups = getattr(session.identity, "groups", ()) or ()
        return not (self._exempt and self._exempt.intersection(groups))

    def maskerFor(self, session) -> Masker:
        """The L{Masker} a session's protocol calls directly (C{SessionChain.masker})."""
        return self.masker

    def output(self, hook):
        """
        Mask C{hook.data}.  Context keys: C{column} (a value of that
        column or field), C{content_type} and C{content_encoding} (a whole
        HTTP body), C{masked=True} (the protocol already masked it with
        L{maskerFor}'s masker: nothing to do).

        @raise sealgate.masking.MaskingFailed: data that cannot be vetted;
            the chain turns it into a refusal (fail closed).
        """
        data = hook.data
        ctx = hook.context
        if ctx.get("masked"):
            return None
        m = self.masker
        if isinstance(data, bytes):
            if "content_type" in ctx or "content_encoding" in ctx:
                body, _coding = m.maskEncodedBody(data, ctx.get("content_encoding"),
                                                  ctx.get("content_type"))
                return Rewrite(body)
            column = ctx.get("column")
            if column is not None and m.columnMasked(column):
                return Rewrite(m.maskValue(column, "").encode())
            return Rewrite(m.maskBytes(data))
        if isinstance(data, str):
            return Rewrite(m.maskValue(ctx.get("column"), data))
        if isinstance(data, (dict, list)):
            return Rewrite(m.maskJson(data))
        return None


@implementer(IInterceptorPlugin)
class MaskingPlugin:
    """Contributes L{MaskingInterceptor} when C{[masking]} names anything to mask."""

    name = "masking"
    order = 400

    def build(self, config, gateway):
        masker = buildMasker(config.masking)
        if masker is None:
            return None
        return MaskingInterceptor(masker, config.masking.connections,
                                  config.masking.exempt_groups)


plugin = MaskingPlugin()
