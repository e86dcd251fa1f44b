"""What a held command does, in words an approver reads: from the classifier's effects and the protocol's details."""

from typing import Any

#: One phrase per SQL effect word (L{sealgate.protocols.postgres.effects.EFFECTS}),
#: most severe first; C{{rel}} is the relations the statement touches.
SQL_PHRASES: dict[str, str] = {
    "runs-os-command": "runs an operating-system command on the database server",
    "high-risk": "cannot be classified with certainty (judged high risk)",
    "drops-object": "drops {rel}",
    "truncates": "empties {rel}",
    "deletes-all-rows": "deletes every row of {rel}",
    "updates-all-rows": "updates every row of {rel}",
    "merge-deletes": "merges into {rel} with a DELETE action",
    "writes-server-files": "writes files on the database server",
    "reads-server-files": "reads files on the database server",
    "changes-roles": "changes database roles",
    "changes-privileges": "changes privileges on {rel}",
    "changes-owner": "changes the owner of {rel}",
    "changes-schema": "moves {rel} to another schema",
    "renames": "renames {rel}",
    "runs-server-code": "runs code on the server (a function, procedure or DO block)",
    "defines-objects": "changes the definition of {rel}",
    "changes-parsing": "changes how the session parses text",
    "writes-rows": "writes rows of {rel}",
}


def _relations(details: dict) -> str:
    rels = [str(r) for r in details.get("relations") or () if r]
    if not rels:
        return "its objects"
    if len(rels) > 3:
        return ", ".join(rels[:3]) + f" and {len(rels) - 3} more"
    return " and ".join([", ".join(rels[:-1]), rels[-1]]) if len(rels) > 1 else rels[0]


def summarize(kind: str, text: str, details: Any) -> str:
    """
    One sentence for the approval card, the CLI and notifications, e.g.
    "deletes every row of customers" or "runs `rm -rf /srv` over ssh".
    Never contains more of the command than the command itself shows.
    """
    details = dict(details or {})
    if kind == "sql":
        effects = [e for e in SQL_PHRASES if e in set(details.get("effects") or ())]
        if effects:
            rel = _relations(details)
            return "; ".join(SQL_PHRASES[e].format(rel=rel) for e in effects[:3])
        kinds = [str(k) for k in details.get("statements") or ()]
        if kinds:
            return f"runs {', '.join(kinds[:3])} on {_relations(details)}"
        return "runs a SQL statement"
    if kind == "exec":
        return f"runs `{_short(str(details.get('command') or text))}` on the host"
    if kind == "sftp":
        op, path = details.get("op"), details.get("path")
        target = f" to {details['target']}" if details.get("target") else ""
        return f"file transfer: {op} {path}{target}" if op else f"file transfer: {_short(text)}"
    if kind == "http":
        method, _, target = text.partition(" ")
        return f"sends {method} {_short(target)}"
    return f"{kind}: {_short(text)}"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def targetOf(connection) -> str:
    """A connection as an approver knows it: its name and where its backend is."""
    backend = str(getattr(connection, "backend", "") or "")
    host = port = ""
    for part in backend.split(":")[1:]:
        key, _, value = part.partition("=")
        if key == "host":
            host = value
        elif key == "port":
            port = value
    where = f"{host}:{port}" if host else backend
    return f"{connection.name} ({where})" if where else str(connection.name)
