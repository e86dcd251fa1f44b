"""The built-in masking interceptor: plugin contract, which sessions it covers, the output hook."""

import gzip
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from sealgate import Chain, OutputRefused
from sealgate.chain.hooks import Output
from sealgate.chain.masking import MaskingInterceptor, plugin
from sealgate.chain.verdicts import Rewrite
from sealgate.config import (
    ConnectionConfig,
    GatewayConfig,
    GatewaySection,
    IdentityConfig,
    MaskingConfig,
)
from sealgate.identity import Identity
from sealgate.interfaces import IInterceptor, IInterceptorPlugin
from sealgate.masking import REDACTED, Masker
from sealgate.plugins import interceptorPlugins
from sealgate.session import Session


class Recording:
    def frame(self, *a):
        pass

    def event(self, *a):
        pass


def config(**masking):
    conns = tuple(ConnectionConfig(n, "postgres", "tcp:0", "tcp:host=h:port=1")
                  for n in ("db-prod", "db-dev", "web"))
    return GatewayConfig("test.toml", GatewaySection(state_dir=Path("/nonexistent")),
                         IdentityConfig(), (), conns, (), MaskingConfig(**masking))


def session(cfg, connection="db-prod", groups=("eng",)):
    return Session("s1", cfg.connection(connection), Identity("alice", groups), "127.0.0.1:1",
                   recording=Recording())


def test_plugin_provides_the_interface_and_its_interceptor_too():
    assert verifyObject(IInterceptorPlugin, plugin)
    assert (plugin.name, plugin.order) == ("masking", 400)
    i = plugin.build(config(detectors=("credit_card",)), None)
    assert verifyObject(IInterceptor, i)
    assert i.name == "masking"


def test_plugin_is_discovered_in_chain_order():
    found = {p.name: p for p in interceptorPlugins()}
    assert found["masking"].order == 400
    assert verifyObject(IInterceptorPlugin, found["masking"])
    assert isinstance(found["masking"].build(config(columns=("ssn",)), None), MaskingInterceptor)


def test_nothing_to_mask_means_no_interceptor():
    assert plugin.build(config(), None) is None
    assert plugin.build(config(connections=("db-*",), exempt_groups=("dba",)), None) is None


def test_applies_by_connection_glob_and_skips_exempt_groups():
    cfg = config(detectors=("email",), connections=("db-*",), exempt_groups=("dba",))
    i = plugin.build(cfg, None)
    assert i.appliesTo(session(cfg, "db-prod"))
    assert i.appliesTo(session(cfg, "db-dev"))
    assert not i.appliesTo(session(cfg, "web"))
    assert not i.appliesTo(session(cfg, "db-prod", groups=("eng", "dba")))
    star = plugin.build(config(detectors=("email",)), None)
    assert star.appliesTo(session(cfg, "web"))


def test_session_chain_exposes_the_masker_only_where_it_applies():
    cfg = config(detectors=("credit_card",), connections=("db-prod",))
    chain = Chain([plugin.build(cfg, None)])
    covered = chain.forSession(session(cfg, "db-prod"))
    assert isinstance(covered.masker, Masker) and covered.wantsOutput
    other = chain.forSession(session(cfg, "web"))
    assert other.masker is None and not other.wantsOutput
    assert other.output(b"4111111111111111") == b"4111111111111111"


def test_output_hook_rewrites_str_bytes_columns_and_bodies():
    cfg = config(detectors=("credit_card", "email"), columns=("ssn",), json_fields=("password",))
    i = plugin.build(cfg, None)
    s = session(cfg)
    assert i.output(Output(s, "mail bob@example.com")) == Rewrite("mail ***@example.com")
    assert i.output(Output(s, b"4111111111111111")) == Rewrite(b"************1111")
    assert i.output(Output(s, "123-45-6789", {"column": "SSN"})) == Rewrite(REDACTED)
    assert i.output(Output(s, b"x", {"column": "ssn"})) == Rewrite(REDACTED.encode())
    body = gzip.compress(b'{"password": "hunter2", "card": "4111111111111111"}')
    v = i.output(Output(s, body, {"content_type": "application/json", "content_encoding": "gzip"}))
    assert gzip.decompress(v.value) == b'{"password": "********", "card": "************1111"}'
    assert i.output(Output(s, b"4111111111111111", {"masked": True})) is None


def test_unmaskable_body_is_refused_through_the_chain():
    cfg = config(detectors=("credit_card",))
    sc = Chain([plugin.build(cfg, None)]).forSession(session(cfg))
    assert sc.output(b'{"c": "4111111111111111"}', content_type="application/json") == \
        b'{"c": "************1111"}'
    with pytest.raises(OutputRefused):
        sc.output(b'{"c": "4111111111111111"', content_type="application/json")
    with pytest.raises(OutputRefused):
        sc.output(b"\x1f\x8b broken", content_type="text/plain", content_encoding="gzip")
