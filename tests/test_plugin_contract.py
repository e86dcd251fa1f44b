"""The published plugin contract: interfaces verified on the built-ins, and no private import where an author looks."""

import ast
from pathlib import Path

import attrs
from zope.interface.verify import verifyObject

import sealgate
from sealgate.chain.access import AccessInterceptor
from sealgate.chain.masking import MaskingInterceptor
from sealgate.chain.rules import RulesInterceptor
from sealgate.config import MaskingConfig
from sealgate.interfaces import (
    ICommandHook,
    IGateway,
    IInterceptor,
    IMasker,
    IOutputHook,
    ISession,
    ISessionStartHook,
)
from sealgate.masking import Masker
from sealgate.testing import fakeGateway, fakeSession

ROOT = Path(__file__).parent.parent


def test_a_session_provides_isession():
    assert verifyObject(ISession, fakeSession())


def test_the_gateway_provides_the_fuller_igateway():
    assert verifyObject(IGateway, fakeGateway())


def test_built_in_interceptors_provide_the_hooks_they_have():
    masker = Masker.fromConfig(MaskingConfig(detectors=("credit_card",)))
    assert verifyObject(ISessionStartHook, AccessInterceptor(()))
    assert verifyObject(IOutputHook, MaskingInterceptor(masker))
    assert verifyObject(IInterceptor, RulesInterceptor([], None))
    session = fakeSession()
    assert verifyObject(ICommandHook, RulesInterceptor([], None).bind(session))
    assert verifyObject(IMasker, masker)


def test_every_public_name_is_exported():
    for name in sealgate.__all__:
        assert getattr(sealgate, name) is not None, name


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _private(module: str, names) -> bool:
    parts = module.split(".")
    return (parts[0] == "sealgate"
            and (any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names)))


def test_the_out_of_tree_plugin_imports_nothing_private():
    files = list((ROOT / "tests" / "plugins_oot").rglob("*.py"))
    assert files
    found = [(str(f.relative_to(ROOT)), m) for f in files for m, names in _imports(f)
             if _private(m, names)]
    assert found == []


def test_built_in_protocols_do_not_import_the_cores_private_modules():
    # A built-in that needs a core internal means a plugin author would too.
    core = ("sealgate.chain._", "sealgate.session._", "sealgate.gateway._", "sealgate.protocols._io")
    found = []
    for f in (ROOT / "src" / "sealgate" / "protocols").rglob("*.py"):
        for module, _ in _imports(f):
            if module.startswith(core):
                found.append((str(f.relative_to(ROOT)), module))
    assert found == []


def test_listener_sharing_is_the_same_protocol_on_the_same_endpoint():
    from sealgate.config import ConnectionConfig

    def conn(name, protocol, listen):
        return ConnectionConfig(name, protocol, listen, "tcp:host=h:port=1")

    a, b = conn("a", "postgres", "tcp:5432"), conn("b", "postgres", "tcp:5432")
    other, ssh = conn("c", "postgres", "tcp:5433"), conn("d", "ssh", "tcp:5432")
    gw = fakeGateway()
    gw.config = attrs.evolve(gw.config, connections=(a, other, ssh, b))
    assert gw.connectionsSharing(b) == [a, b]
    assert gw.connectionsSharing(ssh) == [ssh]
    lone = conn("e", "line", "tcp:1")
    assert gw.connectionsSharing(lone) == [lone]
