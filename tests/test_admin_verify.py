"""The admin API's verify checks against the key pinned at the first start, as `sealgate verify` does."""

import pytest_twisted

from sealgate.recording.checkpoint import Signer
from tests.test_admin_api import admin  # noqa: F401


@pytest_twisted.ensureDeferred
async def test_admin_verify_names_the_pinned_key_and_fails_when_the_key_file_is_replaced(admin):  # noqa: F811
    s = await admin.session("alice")
    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/verify")
    assert code == 200 and body["ok"] is True, body
    assert body["key"].startswith("SHA256:") and body["key"].endswith("(pinned at the first start)")
    keyFile = admin.running.stateDir / "signing.key"
    keyFile.write_text(Signer.generate(admin.running.gateway.store.origin).skey() + "\n")
    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/verify")
    assert code == 200 and body["ok"] is False
    assert any(p.startswith("THE SIGNING KEY CHANGED") for p in body["problems"]), body["problems"]
