"""GET /openapi.json: the admin API described as OpenAPI 3.1 (public: it holds no data)."""

import json

from sealgate import __version__ as _version
from sealgate.admin._http import Leaf


def _op(summary: str, roles: str, params=(), body=False, ok="JSON", tag="api") -> dict:
    op = {"summary": summary, "description": f"Roles: {roles}.", "tags": [tag],
          "responses": {"200": {"description": ok},
                        "401": {"description": "no or bad credential"},
                        "403": {"description": "the identity lacks the role"}}}
    if roles == "public":
        op["security"] = []
        op["responses"] = {"200": {"description": ok}}
    if params:
        op["parameters"] = [{"name": n, "in": where, "required": where == "path",
                             "schema": {"type": t}, "description": d} for n, where, t, d in params]
    if body:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"reason": {"type": "string", "maxLength": 1000}}}}}}
    return op


_ID = ("id", "path", "string", "ticket or session id")
READ = "admin, approver, auditor"


def document() -> dict:
    paths = {
        "/healthz": {"get": _op("Liveness (503 with the reason while the store's writer is down, "
                                "its disk is full or its backlog is over max_unsealed)", "public",
                                tag="health")},
        "/readyz": {"get": _op("Readiness (503 while starting, stopping or the store is unhealthy; "
                               "witnessing: each witness's cosigned size and lag, never a 503)",
                               "public", tag="health")},
        "/metrics": {"get": _op("Prometheus metrics (sealgate_*)", "public", ok="text exposition",
                                tag="health")},
        "/openapi.json": {"get": _op("This document", "public", tag="health")},
        "/api/me": {"get": _op("The caller, their groups and admin roles (and the console CSRF token)",
                               "any authenticated identity")},
        "/api/nodes": {"get": _op("The fleet's nodes and their lease state (up/down)", READ)},
        "/api/approvals": {"get": _op(
            "Pending tickets (all=1: decided ones too); without a role, only the caller's own",
            "any authenticated identity", [("all", "query", "string", "1 to include decided tickets")])},
        "/api/approvals/{id}": {"get": _op("One ticket, with its notification deliveries",
                                           READ + "; the requester for their own", [_ID])},
        "/api/approvals/{id}/approve": {"post": _op(
            "Approve (N-of-M: each approver counts once; never the requester)",
            "admin, approver, and only members of the rule's approver groups", [_ID], True)},
        "/api/approvals/{id}/deny": {"post": _op("Deny (a reason is required)",
                                                 "admin, approver, and only members of the rule's "
                                                 "approver groups", [_ID], True)},
        "/api/approvals/{id}/cancel": {"post": _op("Cancel", "the requester; admin for anyone's", [_ID], True)},
        "/api/sessions": {"get": _op("Recorded and live sessions, newest first", READ, [
            ("protocol", "query", "string", "exact protocol"),
            ("connection", "query", "string", "exact connection name"),
            ("identity", "query", "string", "substring of the subject"),
            ("state", "query", "string", "live, open, closed or cut off"),
            ("client", "query", "string", "exact client address"),
            ("command", "query", "string", "substring (any case) of a command sealed in the session"),
            ("since", "query", "string", "opened at or after (Unix time or ISO 8601)"),
            ("until", "query", "string", "opened before (Unix time or ISO 8601)"),
            ("limit", "query", "integer", "at most (default 100, max 1000)")])},
        "/api/sessions/{id}": {"get": _op("A session (from its sealed leaves), its audit events and its "
                                          "export formats", READ, [_ID])},
        "/api/sessions/{id}/export/{format}": {"get": _op(
            "Download the session in one of its formats: bundle, frames, or its protocol plugin's "
            "(har, asciicast, transcript...)", READ,
            [_ID, ("format", "path", "string", "a name from the session's formats")],
            ok="application/octet-stream")},
        "/api/sessions/{id}/frames": {"get": _op(
            "Recorded frames for replay (data base64; null when redacted)", READ,
            [_ID, ("after", "query", "integer", "frames after this seq"),
             ("limit", "query", "integer", "at most (default 500, max 5000)")])},
        "/api/sessions/{id}/transcript": {"get": _op("The protocol's text replay", READ, [_ID],
                                                     ok="text/plain")},
        "/api/sessions/{id}/asciicast": {"get": _op("An SSH terminal session as asciicast v2", READ, [_ID],
                                                    ok="application/x-asciicast")},
        "/api/sessions/{id}/frames/{seq}/redact": {"post": _op(
            "Delete one frame's payload and salt (reason required); sealed, proofs stay valid",
            "admin", [_ID, ("seq", "path", "integer", "frame number")], body=True)},
        "/api/sessions/{id}/verify": {"get": _op(
            "Verify the session's frames and the log against the signed checkpoints", READ, [_ID])},
        "/api/log/checkpoint": {"get": _op("Latest signed checkpoint note and the verifier key", READ,
                                           tag="log")},
        "/api/log/leaves": {"get": _op("Raw log leaves (base64) and their RFC 9162 leaf hashes", READ,
                                       [("start", "query", "integer", "first index"),
                                        ("end", "query", "integer", "one past the last (max start+1000)")],
                                       tag="log")},
        "/api/log/inclusion": {"get": _op("RFC 9162 inclusion proof", READ, [
            ("index", "query", "integer", "leaf index"),
            ("size", "query", "integer", "tree size (default: latest checkpoint)")], tag="log")},
        "/api/log/consistency": {"get": _op("RFC 9162 consistency proof", READ, [
            ("first", "query", "integer", "older tree size"),
            ("second", "query", "integer", "newer tree size (default: latest checkpoint)")], tag="log")},
        "/api/notifications": {"get": _op("Notification targets and recent deliveries", READ)},
        "/api/notifications/test": {"post": _op("Send a test notification to every target", "admin")},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sealgate admin API", "version": _version,
                 "description": "Sessions, approvals, the sealed log and health of one sealgate node. "
                                "Authenticate with an OIDC token or API key as a bearer token, or "
                                "with a console login cookie plus the X-Sealgate-CSRF header."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "an OIDC access/id token or a sealgate API key (sgk_...)"},
            "console": {"type": "apiKey", "in": "cookie", "name": "sealgate_login"}}},
        "security": [{"bearer": []}, {"console": []}],
        "paths": paths,
    }


class OpenAPI(Leaf):
    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(document(), indent=1).encode()
