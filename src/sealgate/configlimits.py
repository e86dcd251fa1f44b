"""The [limits] table and the [identity] issuer checks: what a client may do before and while logged in."""

import re
from pathlib import Path

import attrs

from sealgate.configtable import Table


@attrs.frozen
class Limits:
    """
    The C{[limits]} table: what a client may do before it logs in, how
    failed logins are slowed, and how often live credentials are re-checked.
    Every key and its default is listed in docs/operations.md.
    """

    login_timeout: float = 10.0
    max_prelogin_bytes: int = 64 * 1024
    max_unauthenticated: int = 512
    max_unauthenticated_per_source: int = 64
    refusal_log_interval: float = 60.0
    login_backoff_base: float = 0.1
    login_backoff_max: float = 5.0
    failed_login_interval: float = 60.0
    recheck_interval: float = 60.0
    credential_cache: float = 5.0


def parseLimits(t: Table) -> Limits:
    d = Limits()
    limits = Limits(
        login_timeout=t.duration("login_timeout", d.login_timeout),
        max_prelogin_bytes=int(t.number("max_prelogin_bytes", d.max_prelogin_bytes, minimum=1024)),
        max_unauthenticated=int(t.number("max_unauthenticated", d.max_unauthenticated, minimum=1)),
        max_unauthenticated_per_source=int(t.number(
            "max_unauthenticated_per_source", d.max_unauthenticated_per_source, minimum=1)),
        refusal_log_interval=t.duration("refusal_log_interval", d.refusal_log_interval),
        login_backoff_base=t.duration("login_backoff_base", d.login_backoff_base),
        login_backoff_max=t.duration("login_backoff_max", d.login_backoff_max),
        failed_login_interval=t.duration("failed_login_interval", d.failed_login_interval),
        recheck_interval=t.duration("recheck_interval", d.recheck_interval),
        credential_cache=t.duration("credential_cache", d.credential_cache),
    )
    for key in ("login_timeout", "recheck_interval", "failed_login_interval",
                "refusal_log_interval"):
        if getattr(limits, key) <= 0:
            raise t.where.error(key, "must be more than 0", 'give a duration, e.g. "10s"')
    if limits.login_backoff_max >= limits.login_timeout:
        raise t.where.error("login_backoff_max", f"{limits.login_backoff_max:g}s is not below "
                            f"login_timeout ({limits.login_timeout:g}s)",
                            "keep the longest backoff shorter than the login timeout, or every "
                            "throttled login times out")
    if limits.credential_cache > limits.recheck_interval:
        raise t.where.error("credential_cache", "is longer than recheck_interval",
                            "keep the per-request cache short (default 5s)")
    t.finish()
    return limits


_LOOPBACK_ISSUER = re.compile(r"^http://(127\.\d+\.\d+\.\d+|\[::1\]|localhost)(:\d+)?(/|$)", re.I)


def issuerTransport(i: Table, issuer: str | None) -> tuple[str | None, bool]:
    """
    C{oidc_ca_file} and C{allow_insecure_issuer} of the C{[identity]} table,
    checked against the issuer URL.

    @return: (the CA file or None, whether plain http is allowed).
    """
    insecure = i.bool("allow_insecure_issuer", False)
    if issuer is not None and issuer.startswith("http://") and not insecure \
            and not _LOOPBACK_ISSUER.match(issuer):
        # Keys fetched over plain HTTP can be swapped by anyone on the path,
        # and with them every identity.
        raise i.where.error("oidc_issuer", f"{issuer!r} is plain http on a non-loopback host",
                            "use the issuer's https:// URL (and oidc_ca_file for a private CA), "
                            "or set allow_insecure_issuer = true for a lab")
    ca = i.str("oidc_ca_file")
    if ca is not None:
        try:
            pem = Path(ca).read_bytes()
        except OSError as e:
            raise i.where.error("oidc_ca_file", f"cannot read {ca}: {e.strerror}",
                                "point it at a readable PEM file of the issuer's CA")
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise i.where.error("oidc_ca_file", f"{ca} holds no PEM certificate",
                                "give the PEM-encoded CA certificate(s) that signed the issuer's")
    return ca, insecure
