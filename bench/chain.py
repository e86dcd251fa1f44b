"""What the interceptor chain costs per message: pass-through, one rule, masking of output.

Run: .venv/bin/python bench/chain.py
Prints nanoseconds per call for each path beside a bare function call (the
floor a protocol pays to ask anything at all).
"""

import timeit

from sealgate.chain import rules
from sealgate.chain._chain import Chain
from sealgate.config import ConnectionConfig, Rule
from sealgate.identity import Identity
from sealgate.session import Session


class _NoRecording:
    def event(self, kind, fields):
        pass

    def frame(self, direction, data, channel=0):
        pass


def _session(chain):
    s = Session("bench", ConnectionConfig("db", "postgres", "tcp:0", "tcp:host=h:port=1"),
                Identity("alice", {"eng"}), "127.0.0.1:1", recording=_NoRecording())
    s.chain = chain.forSession(s)
    return s


def _rule(name, action, matchers):
    return Rule(name=name, connections=("*",), groups=("*",), action=action, matchers=matchers)


def measure(label, fn, n=200_000, floor=None):
    best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9
    ratio = f"  ({best / floor:.1f}x a bare call)" if floor else ""
    print(f"{label:58} {best:8.0f} ns/msg{ratio}")
    return best


def main():
    details = {"statements": ("SELECT",), "relations": ("users",)}

    def bare(kind, text, d):
        return None

    floor = measure("bare function call (floor)", lambda: bare("sql", "select 1", details))
    empty = _session(Chain([]))
    measure("no interceptor: wantsCommand check (the hot path)",
            lambda: empty.chain.wantsCommand, floor=floor)
    measure("no interceptor: chain.command()",
            lambda: empty.chain.command("sql", "select 1", details), floor=floor)
    guarded = _session(Chain([rules.RulesInterceptor(
        [_rule("no-drop", "deny", {"statements": ["DROP", "TRUNCATE"]})], None)]))
    measure("one deny rule, no match: chain.command()",
            lambda: guarded.chain.command("sql", "select 1", details), floor=floor)
    measure("one deny rule, no match: session.decide() incl. audit",
            lambda: guarded.decide("sql", "select 1", details), floor=floor)
    many = _session(Chain([rules.RulesInterceptor(
        [_rule(f"r{i}", "deny", {"relations": [f"t{i}_*"]}) for i in range(20)], None)]))
    measure("twenty relation rules, no match: chain.command()",
            lambda: many.chain.command("sql", "select 1", details), floor=floor)
    try:
        from sealgate.chain import masking as maskingPlugin
        from sealgate.config import GatewayConfig, MaskingConfig
    except ImportError:
        return
    cfg = GatewayConfig("bench", None, None, (), (), (),
                        MaskingConfig(detectors=("credit_card", "email")))
    interceptor = maskingPlugin.plugin.build(cfg, None)
    masked = _session(Chain([interceptor]))
    row = b"42|alice|2024-01-01|some ordinary text without secrets"
    measure("masking on, clean 54-byte row: chain.output()",
            lambda: masked.chain.output(row), floor=floor)


if __name__ == "__main__":
    main()
