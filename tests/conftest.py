"""Fixtures for real backends; the logic lives in tests/harness."""

import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings

# Two cores shared by two xdist workers and real backends: wall-clock
# deadlines would only measure the machine's load.
settings.register_profile("sealgate", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("sealgate")


@pytest.fixture(scope="session", autouse=True)
def _verifierCheckpointsOfTheRun(tmp_path_factory):
    """`sealgate verify` keeps its checkpoints in the run's temporary directory, not in a home directory."""
    import os

    os.environ["SEALGATE_CHECKPOINT_DIR"] = str(tmp_path_factory.mktemp("verified"))


@pytest.fixture(autouse=True)
def _verifierCheckpoints(_verifierCheckpointsOfTheRun, tmp_path_factory, monkeypatch):
    """...and one directory per test, so no test meets a checkpoint another kept."""
    monkeypatch.setenv("SEALGATE_CHECKPOINT_DIR", str(tmp_path_factory.mktemp("verified")))


@pytest.fixture(scope="session")
def postgres():
    """PostgreSQL 15 on 127.0.0.1; see L{tests.harness.postgres.PostgresServer}."""
    from tests.harness.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd():
    """OpenSSH sshd on 127.0.0.1, key auth only; see L{tests.harness.sshd.SSHServer}."""
    from tests.harness.sshd import SSHServer

    server = SSHServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http_backend():
    """The HTTP test app in a subprocess; see L{tests.harness.httpbackend.HTTPBackend}."""
    from tests.harness.httpbackend import HTTPBackend

    server = HTTPBackend().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def https_backend():
    """The same app over TLS (cert for 127.0.0.1 from a throwaway CA: C{tls.caFile})."""
    from tests.harness.httpbackend import HTTPBackend

    server = HTTPBackend(tls=True).start()
    yield server
    server.stop()


@pytest.fixture
def oidc_issuer():
    """A local OIDC issuer (discovery + JWKS on loopback); see L{tests.harness.oidc.OIDCIssuer}."""
    from tests.harness.oidc import OIDCIssuer

    issuer = OIDCIssuer().start()
    yield issuer
    pytest_twisted.blockon(issuer.stop())


@pytest.fixture
def logs():
    """Every log event of the test, formatted, to prove no credential reaches a log."""
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observer(event):
        seen.append(formatEvent(event) + repr(event.get("log_failure", "")))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def receiver():
    """A webhook receiver on loopback; see L{tests.harness.webhook.Receiver}."""
    from twisted.internet import reactor
    from twisted.web import server

    from tests.harness.webhook import Receiver

    r = Receiver()
    site = server.Site(r)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    r.url = f"http://127.0.0.1:{port.getHost().port}"
    yield r
    pytest_twisted.blockon(port.stopListening())
