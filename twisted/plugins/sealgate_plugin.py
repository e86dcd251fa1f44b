"""twistd and built-in protocol/interceptor plugins for sealgate, one lazy line each."""

from twisted.application.service import ServiceMaker

from sealgate.plugins import LazyInterceptorPlugin, LazyProtocolPlugin

sealgate = ServiceMaker("sealgate", "sealgate.tap", "Identity-aware access gateway", "sealgate")

postgres = LazyProtocolPlugin("postgres", "sealgate.protocols.postgres.plugin")
ssh = LazyProtocolPlugin("ssh", "sealgate.protocols.ssh.plugin")
http = LazyProtocolPlugin("http", "sealgate.protocols.http.plugin")

access = LazyInterceptorPlugin("access", 100, "sealgate.chain.access")
rules = LazyInterceptorPlugin("rules", 200, "sealgate.chain.rules")
masking = LazyInterceptorPlugin("masking", 400, "sealgate.chain.masking")
